// The Azure Bot registration: the bot's managed identity is its Bot Framework identity
// (UserAssignedMSI, so no app password exists anywhere), Teams channel on.
@description('The bot\'s handle: unique across Azure.')
param name string
@description('What Teams users see as the bot\'s name.')
param displayName string
@description('https URL of the bot\'s /api/messages on the Container App.')
param endpoint string
param identityClientId string
param identityResourceId string
param tenantId string
@allowed([
  'F0'
  'S1'
])
@description('F0 is free for standard channels such as Teams.')
param sku string = 'F0'

resource bot 'Microsoft.BotService/botServices@2022-09-15' = {
  name: name
  location: 'global'
  kind: 'azurebot'
  sku: {
    name: sku
  }
  properties: {
    displayName: displayName
    endpoint: endpoint
    msaAppId: identityClientId
    msaAppType: 'UserAssignedMSI'
    msaAppTenantId: tenantId
    msaAppMSIResourceId: identityResourceId
  }
}

resource teams 'Microsoft.BotService/botServices/channels@2022-09-15' = {
  parent: bot
  name: 'MsTeamsChannel'
  location: 'global'
  properties: {
    channelName: 'MsTeamsChannel'
    properties: {
      isEnabled: true
      acceptedTerms: true
    }
  }
}

output name string = bot.name
