// Step 1 of the deployment: the bot's resource group, the session resource group (the one place
// the bot may create VMs), the container registry, and the bot's managed identity with every role it
// holds: AcrPull on the registry, Storage Table Data Contributor on the storage account, the custom
// operator role on the session group.
// The registry must exist before `az acr build` can push the image main.bicep runs (a Container App
// refuses an image tag its registry does not have yet), and the role assignments must be effective
// before main.bicep's first replica pulls that image: made here, they have the minutes of the build
// to propagate through Entra (microsoft/azure-container-apps#646), and no step needs a rerun.
//
//   az deployment sub create -n vpn-bot -l eastus -f infra/groups.bicep
targetScope = 'subscription'

@description('Deployment name: the bot\'s resource group is called this, and every resource is prefixed with it. Lowercase letters, digits and \'-\', starting with a letter (Container Apps names); upper case is refused before anything is created.')
@minLength(3)
@maxLength(20)
param name string = 'vpn-bot'

@description('Azure region for the bot\'s resources.')
param location string = deployment().location

@description('Create the container registry (ACR Basic, about $5 a month): false when main.bicep runs a public image instead.')
param createRegistry bool = true

@description('Create the session resource group; false to use one that exists (give its name).')
param createSessionResourceGroup bool = true

@description('Where the per-session VMs live. The bot\'s role is scoped to this group only.')
param sessionResourceGroupName string = '${name}-sessions'

@description('Region of the session resource group (VMs may still go to AZURE_ALLOWED_LOCATIONS).')
param sessionLocation string = location

@description('Create the shared VNet and NSG in the session group now (the bot would create them on its first session).')
param createSessionNetwork bool = true

// Bicep has no regular expressions: @minLength/@maxLength bound the name, and this refuses upper case
// at validation, before anything exists (Container Apps would refuse it minutes into step 3).
var lowercaseName = (name == toLower(name)) ? name : fail('name must be lowercase (letters, digits and \'-\'): "${name}" is not')

resource botGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: lowercaseName
  location: location
  tags: {
    'managed-by': lowercaseName
  }
}

resource sessionGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = if (createSessionResourceGroup) {
  name: sessionResourceGroupName
  location: sessionLocation
  tags: {
    'managed-by': lowercaseName
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: botGroup
  params: {
    name: lowercaseName
    location: location
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: botGroup
  params: {
    name: lowercaseName
    location: location
    principalId: identity.outputs.principalId
  }
}

module registry 'modules/registry.bicep' = if (createRegistry) {
  name: 'registry'
  scope: botGroup
  params: {
    name: lowercaseName
    location: location
    principalId: identity.outputs.principalId
  }
}

module sessionAccess 'modules/session-access.bicep' = {
  name: 'session-access'
  scope: resourceGroup(sessionResourceGroupName)
  params: {
    instanceName: lowercaseName
    location: sessionLocation
    principalId: identity.outputs.principalId
    createNetwork: createSessionNetwork
  }
  dependsOn: [
    sessionGroup
  ]
}

@description('Pass to `az acr build -r` and to main.bicep as registryName.')
output registryName string = createRegistry ? registry.outputs.name : ''
output resourceGroup string = botGroup.name
output sessionResourceGroup string = sessionResourceGroupName
output identityName string = identity.outputs.name
output storageAccount string = storage.outputs.name
@description('The custom role on the session group: custom roles outlive their group, delete it by this name (docs/deploy.md, Tear-down).')
output operatorRoleName string = sessionAccess.outputs.roleName
