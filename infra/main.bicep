// The VPN bot on Azure, step 3: the store's tables, Container Apps scaled to zero with a scheduled
// reap job, the Azure Bot with Teams and, with the web channel on, the page on a Static Web App.
// Step 1 (infra/groups.bicep) made the user-assigned managed identity this uses for everything (Bot
// Framework identity, Table Storage, registry pull, the session resource group), the storage
// account and every role assignment; step 2 (`az acr build`) gave them minutes to propagate.
// Run both first (see docs/deploy.md):
//
//   az deployment group create -g vpn-bot -f infra/main.bicep -p registryName=<from step 1> admins=email:you@contoso.com
targetScope = 'resourceGroup'

@description('Deployment name (as in groups.bicep): prefix of every resource; also VPN_INSTANCE_NAME, the tag on session VMs. Lowercase letters, digits and \'-\'.')
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

@description('Always-on replicas. 0: nothing runs (or costs) while nobody uses the bot; the first message after idle waits for a cold start. 1 adds about $11-13.50 a month (docs/deploy.md).')
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

param vmSize string = 'Standard_B1ls'

@description('DNS servers written into client configs (WG_DNS): without one, a full tunnel leaves clients on their LAN resolver.')
param dns string = '1.1.1.1'

param sessionMinutes int = 30
param maxSessions int = 10

@description('VPN_TABLE_PREFIX: lets several deployments share one storage account. The tables are declared here.')
@minLength(1)
@maxLength(30)
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

@description('VPN_LOCAL_AUTH_SECRET (at least 32 characters, e.g. `openssl rand -base64 32`): turns the web page and API on. The page is then served by a Static Web App (Free), never by the bot.')
@secure()
param webAuthSecret string = ''

@description('Microsoft sign-in on the web page: the API app registration\'s client id (VPN_ENTRA_API_AUDIENCE). Needs entraSpaClientId too.')
param entraApiClientId string = ''

@description('Microsoft sign-in on the web page: the page\'s (single-page application) app registration client id (VPN_ENTRA_SPA_CLIENT_ID).')
param entraSpaClientId string = ''

@description('Region of the Static Web App resource; its pages are served from Microsoft\'s edge worldwide. Free plan regions: centralus, eastus2, eastasia, westeurope, westus2.')
param webLocation string = 'eastus2'

// Bicep has no regular expressions: @minLength/@maxLength bound the name, and this refuses upper case
// at validation, before anything is created (as groups.bicep does).
var lowercaseName = (name == toLower(name)) ? name : fail('name must be lowercase (letters, digits and \'-\'): "${name}" is not')
var tenantId = tenant().tenantId
var useRegistry = !empty(registryName)
var registryServer = useRegistry ? '${registryName}${environment().suffixes.acrLoginServer}' : ''
var botImage = empty(image) ? '${registryServer}/vpn-bot:${imageTag}' : image
// The names groups.bicep gave the identity (modules/identity.bicep) and the storage account
// (modules/storage.bicep); tests/test_infra.py checks they agree.
var identityName = '${lowercaseName}-id'
var storageAccountName = take('${replace(lowercaseName, '-', '')}${uniqueString(resourceGroup().id)}', 24)
// The web channel: refused here rather than by a replica that would not start.
var useWeb = empty(webAuthSecret) ? false : ((length(webAuthSecret) >= 32) ? true : fail('webAuthSecret must be at least 32 characters (openssl rand -base64 32)'))
var useEntra = useWeb && !empty(entraApiClientId) && !empty(entraSpaClientId)
var loginEndpoint = environment().authentication.loginEndpoint
var loginOrigin = endsWith(loginEndpoint, '/') ? substring(loginEndpoint, 0, length(loginEndpoint) - 1) : loginEndpoint
// The delegated scope the page asks for, as the bot computes it (WebConfig.api_scope).
var entraScope = contains(entraApiClientId, '://') ? '${entraApiClientId}/access_as_user' : 'api://${entraApiClientId}/access_as_user'

// What the page may fetch besides config.json: the API, and Entra's token endpoint with Microsoft sign-in.
var webConnectSources = useEntra ? 'https://${apps.outputs.fqdn} ${loginOrigin}' : 'https://${apps.outputs.fqdn}'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

module tables 'modules/tables.bicep' = {
  name: 'tables'
  params: {
    storageAccountName: storageAccountName
    tablePrefix: tablePrefix
  }
}

module web 'modules/web.bicep' = if (useWeb) {
  name: 'web'
  params: {
    name: '${lowercaseName}-web'
    location: webLocation
  }
}

module apps 'modules/containerapps.bicep' = {
  name: 'containerapps'
  params: {
    name: lowercaseName
    location: location
    image: botImage
    registryServer: registryServer
    identityResourceId: identity.id
    identityClientId: identity.properties.clientId
    tenantId: tenantId
    tableEndpoint: 'https://${storageAccountName}.table.${environment().suffixes.storage}'
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
    webOrigin: useWeb ? 'https://${web.outputs.hostname}' : ''
    webAuthSecret: webAuthSecret
    entraApiClientId: entraApiClientId
    entraSpaClientId: entraSpaClientId
    entraAuthority: loginOrigin
  }
  // The first replica finds its tables made (its roles were assigned in step 1).
  dependsOn: [
    tables
  ]
}

module bot 'modules/bot-service.bicep' = if (enableTeams) {
  name: 'bot-service'
  params: {
    name: '${lowercaseName}-${uniqueString(resourceGroup().id)}'
    displayName: lowercaseName
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
output storageAccount string = storageAccountName
output reapJob string = apps.outputs.jobName
@description('The page\'s address (the Static Web App), with the web channel on: the SPA redirect URI.')
output webUrl string = useWeb ? 'https://${web.outputs.hostname}/' : ''
@description('The Static Web App to upload web/ to (docs/deploy.md, "The web page").')
output webSiteName string = useWeb ? web.outputs.name : ''
@description('config.json, next to the page\'s index.html on the Static Web App: where the API is and how to sign in.')
output webConfig object = {
  api: 'https://${apps.outputs.fqdn}'
  entra: useEntra ? {
    client_id: entraSpaClientId
    authority: '${loginOrigin}/${tenantId}'
    scope: entraScope
  } : null
}
@description('staticwebapp.config.json: the headers the bot itself sends with its page (strict CSP, no framing), the API origin allowed.')
output webHostConfig object = {
  globalHeaders: {
    'Content-Security-Policy': 'default-src \'none\'; script-src \'self\'; style-src \'self\'; img-src \'self\' blob:; connect-src \'self\' ${webConnectSources}; form-action \'self\'; base-uri \'none\'; frame-ancestors \'none\''
    'X-Content-Type-Options': 'nosniff'
    'Referrer-Policy': 'no-referrer'
    'X-Frame-Options': 'DENY'
    'Cross-Origin-Opener-Policy': 'same-origin'
    'Cache-Control': 'no-cache'
  }
}
@description('Builds the Teams app package (vpn-bot.zip) from this deployment; run it in the repository.')
output teamsManifestCommand string = 'MicrosoftAppId=${identity.properties.clientId} MicrosoftAppType=UserAssignedMSI MicrosoftAppTenantId=${tenantId} VPN_PUBLIC_URL=https://${apps.outputs.fqdn} python app.py teams-manifest --out vpn-bot.zip'
