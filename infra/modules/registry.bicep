// Azure Container Registry, Basic tier: the image the bot and the reap job run.
// Admin user off: pulls use the bot's managed identity, whose AcrPull is assigned here, in step 1
// (groups.bicep), minutes before main.bicep's first pull.
param name string
param location string = resourceGroup().location
@description('Principal id of the bot\'s managed identity: AcrPull, nothing else (it cannot push or delete).')
param principalId string

// AcrPull: pull images only.
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: take('${replace(name, '-', '')}${uniqueString(resourceGroup().id)}', 50)
  location: location
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
  }
}

resource pull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, principalId, acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
