// Step 1 of the deployment: the bot's resource group, the session resource group (the one place
// the bot may create VMs) and the container registry.
// The registry must exist before `az acr build` can push the image main.bicep runs: a Container App
// refuses an image tag its registry does not have yet, so the registry comes first.
//
//   az deployment sub create -n vpn-bot -l eastus -f infra/groups.bicep
targetScope = 'subscription'

@description('Deployment name: the bot\'s resource group is called this, and every resource is prefixed with it (lowercase letters, digits, \'-\').')
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

resource botGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: name
  location: location
  tags: {
    'managed-by': name
  }
}

resource sessionGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = if (createSessionResourceGroup) {
  name: sessionResourceGroupName
  location: sessionLocation
  tags: {
    'managed-by': name
  }
}

module registry 'modules/registry.bicep' = if (createRegistry) {
  name: 'registry'
  scope: botGroup
  params: {
    name: name
    location: location
  }
}

@description('Pass to `az acr build -r` and to main.bicep as registryName.')
output registryName string = createRegistry ? registry.outputs.name : ''
output resourceGroup string = botGroup.name
output sessionResourceGroup string = sessionResourceGroupName
