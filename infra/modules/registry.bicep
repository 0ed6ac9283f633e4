// Azure Container Registry, Basic tier: the image the bot and the reap job run.
// Admin user off: pulls use the bot's managed identity (AcrPull, assigned in main.bicep).
param name string
param location string = resourceGroup().location

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: take('${replace(name, '-', '')}${uniqueString(resourceGroup().id)}', 50)
  location: location
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
