// The VPN bot on Azure in one deployment: a user-assigned managed identity for everything (Bot
// Framework identity, Table Storage, registry pull, the session resource group), Table Storage,
// Container Apps scaled to zero with a scheduled reap job, and the Azure Bot with Teams.
// Run infra/groups.bicep and `az acr build` first (see docs/deploy.md):
//
//   az deployment group create -g vpn-bot -f infra/main.bicep -p registryName=<from step 1> admins=email:you@contoso.com
targetScope = 'resourceGroup'

@description('Deployment name (as in groups.bicep): prefix of every resource; also VPN_INSTANCE_NAME, the tag on session VMs.')
@minLength(3)
@maxLength(20)
param name string = 'vpn-bot'

param location string = resourceGroup().location

@description('The registry from groups.bicep (its output registryName). Empty only with `image` set to a public image.')
param registryName string = ''

@description('Tag built with `az acr build -t vpn-bot:<tag>`; a new tag makes a new revision.')
param imageTag string = 'latest'

@description('A full image reference instead of the registry\'s vpn-bot:<imageTag>, e.g. a public image (then no registry is needed).')
param image string = ''

@description('Always-on replicas. 0: nothing runs (or costs) while nobody uses the bot; the first message after idle waits for a cold start. 1 costs about $10-12 a month (docs/deploy.md).')
@minValue(0)
@maxValue(10)
param minReplicas int = 0

@minValue(1)
@maxValue(10)
param maxReplicas int = 3

@description('vCPU per bot replica (0.25 to 2, as text). Imports are CPU-bound: 0.5 keeps a cold start short.')
param cpu string = '0.5'

@description('Memory per bot replica: twice the vCPU in GiB, e.g. 1Gi for 0.5 vCPU.')
param memory string = '1Gi'

@description('Cron schedule (UTC) of `python app.py reap`: expiry, warnings, interrupted work and reconcile while no replica runs.')
param reapSchedule string = '* * * * *'

@description('VPN_USERS: who may use the bot, e.g. domain:contoso.com or teams:<Entra object id>, comma-separated.')
param users string = ''

@description('VPN_ADMINS: who may list and stop every session, same forms.')
param admins string = ''

@description('The session resource group from groups.bicep (or an existing one).')
param sessionResourceGroupName string = '${name}-sessions'

@description('Default region for session VMs (AZURE_LOCATION).')
param sessionLocation string = location

@description('Create the shared VNet and NSG in the session group now (the bot would create them on its first session).')
param createSessionNetwork bool = true

param vmSize string = 'Standard_B1ls'

@description('DNS servers written into client configs (WG_DNS): without one, a full tunnel leaves clients on their LAN resolver.')
param dns string = '1.1.1.1'

param sessionMinutes int = 30
param maxSessions int = 10

@description('VPN_TABLE_PREFIX: lets several deployments share one storage account.')
param tablePrefix string = 'vpn'

@description('Send container logs to a Log Analytics workspace (pay per GB ingested).')
param enableLogAnalytics bool = true

@description('Create the Azure Bot resource with the Teams channel.')
param enableTeams bool = true

@allowed([
  'F0'
  'S1'
])
param botSku string = 'F0'

@description('GroupMe group id(s) the bot answers (not secret); the three GroupMe credentials below are Container Apps secrets.')
param groupmeGroupId string = ''

@secure()
param groupmeBotId string = ''

@secure()
param groupmeCallbackSecret string = ''

@secure()
param groupmeAccessToken string = ''

var tenantId = tenant().tenantId
var useRegistry = !empty(registryName)
var registryServer = useRegistry ? '${registryName}${environment().suffixes.acrLoginServer}' : ''
var botImage = empty(image) ? '${registryServer}/vpn-bot:${imageTag}' : image

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-id'
  location: location
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: name
    location: location
    principalId: identity.properties.principalId
  }
}

module registryPull 'modules/registry-pull.bicep' = if (useRegistry) {
  name: 'registry-pull'
  params: {
    registryName: registryName
    principalId: identity.properties.principalId
  }
}

module sessionAccess 'modules/session-access.bicep' = {
  name: 'session-access'
  scope: resourceGroup(sessionResourceGroupName)
  params: {
    instanceName: name
    location: sessionLocation
    principalId: identity.properties.principalId
    createNetwork: createSessionNetwork
  }
}

module apps 'modules/containerapps.bicep' = {
  name: 'containerapps'
  params: {
    name: name
    location: location
    image: botImage
    registryServer: registryServer
    identityResourceId: identity.id
    identityClientId: identity.properties.clientId
    tenantId: tenantId
    tableEndpoint: 'https://${storage.outputs.name}.table.${environment().suffixes.storage}'
    tablePrefix: tablePrefix
    sessionResourceGroup: sessionResourceGroupName
    sessionLocation: sessionLocation
    vmSize: vmSize
    users: users
    admins: admins
    dns: dns
    sessionMinutes: sessionMinutes
    maxSessions: maxSessions
    minReplicas: minReplicas
    maxReplicas: maxReplicas
    cpu: cpu
    memory: memory
    reapSchedule: reapSchedule
    enableLogAnalytics: enableLogAnalytics
    groupmeGroupId: groupmeGroupId
    groupmeBotId: groupmeBotId
    groupmeCallbackSecret: groupmeCallbackSecret
    groupmeAccessToken: groupmeAccessToken
  }
  // The image pull and the VM group must be allowed before the first replica starts (the table
  // role comes with `storage`, whose output this module already uses).
  dependsOn: [
    registryPull
    sessionAccess
  ]
}

module bot 'modules/bot-service.bicep' = if (enableTeams) {
  name: 'bot-service'
  params: {
    name: '${name}-${uniqueString(resourceGroup().id)}'
    displayName: name
    endpoint: 'https://${apps.outputs.fqdn}/api/messages'
    identityClientId: identity.properties.clientId
    identityResourceId: identity.id
    tenantId: tenantId
    sku: botSku
  }
}

@description('MicrosoftAppId: the bot\'s identity (the managed identity\'s client id).')
output botAppId string = identity.properties.clientId
output tenantId string = tenantId
output publicUrl string = 'https://${apps.outputs.fqdn}'
output messagingEndpoint string = 'https://${apps.outputs.fqdn}/api/messages'
output storageAccount string = storage.outputs.name
output reapJob string = apps.outputs.jobName
@description('The custom role on the session group: custom roles outlive their group, delete it by this name (docs/deploy.md, Tear-down).')
output operatorRoleName string = sessionAccess.outputs.roleName
@description('Builds the Teams app package (vpn-bot.zip) from this deployment; run it in the repository.')
output teamsManifestCommand string = 'MicrosoftAppId=${identity.properties.clientId} MicrosoftAppType=UserAssignedMSI MicrosoftAppTenantId=${tenantId} VPN_PUBLIC_URL=https://${apps.outputs.fqdn} python app.py teams-manifest --out vpn-bot.zip'
