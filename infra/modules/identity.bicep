// The bot's one identity: its Bot Framework identity (UserAssignedMSI), Table Storage, image pull
// and the session resource group. Created in step 1 (groups.bicep) together with every role
// assignment it holds, so that the minutes of `az acr build` cover Entra's propagation before
// main.bicep's first replica pulls its image (microsoft/azure-container-apps#646).
param name string
param location string = resourceGroup().location

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-id'
  location: location
}

output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
