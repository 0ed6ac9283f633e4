// Azure Container Apps: a workload-profiles environment whose `Consumption` profile runs the bot as
// an app that scales to zero, and a scheduled job that runs `python app.py reap` so expiry,
// warnings and reconcile happen with no replica running. (An environment without workloadProfiles
// is the legacy Consumption-only kind; the Consumption profile costs the same.)
param name string
param location string = resourceGroup().location
param image string
@description('Login server of the registry the image is pulled from with the identity (empty: a public image).')
param registryServer string = ''
param identityResourceId string
param identityClientId string
param tenantId string
param tableEndpoint string
param tablePrefix string
param sessionResourceGroup string
param sessionLocation string
param vmSize string
param users string
param admins string
param dns string
param sessionMinutes int
param maxSessions int
@minValue(0)
param minReplicas int
@minValue(1)
param maxReplicas int
param cpu string
param memory string
param reapSchedule string
param enableLogAnalytics bool
param groupmeGroupId string
@secure()
param groupmeBotId string
@secure()
param groupmeCallbackSecret string
@secure()
param groupmeAccessToken string
@description('Origin of the Static Web App serving the page (https://<host>): the only origin whose browsers may call the API (VPN_CORS_ORIGINS). Empty with the web channel off.')
param webOrigin string = ''
@description('VPN_LOCAL_AUTH_SECRET: the web page and API are on when it is given.')
@secure()
param webAuthSecret string = ''
@description('Microsoft sign-in on the page: the API app registration\'s client id (VPN_ENTRA_API_AUDIENCE).')
param entraApiClientId string = ''
@description('The page\'s (SPA) app registration client id (VPN_ENTRA_SPA_CLIENT_ID).')
param entraSpaClientId string = ''
@description('VPN_ENTRA_AUTHORITY: the cloud\'s sign-in origin, e.g. https://login.microsoftonline.com.')
param entraAuthority string = ''

var port = 3978
var workloadProfile = 'Consumption'
var metricsPort = 9464
var useGroupMe = !empty(groupmeBotId)
var registries = empty(registryServer) ? [] : [
  {
    server: registryServer
    identity: identityResourceId
  }
]
// GroupMe's tokens are Container Apps secrets; the containers see them only through secretRef.
// Container Apps refuses a secret with an empty value (ContainerAppSecretInvalid: "value or
// keyVaultUrl and identity should be provided"), and the access token is optional (claim links
// only): it becomes a secret, and an env var, only when given.
var useGroupMeToken = useGroupMe && !empty(groupmeAccessToken)
var useWeb = !empty(webAuthSecret)
var useEntra = useWeb && !empty(entraApiClientId) && !empty(entraSpaClientId)
var secrets = concat(useGroupMe ? [
  {
    name: 'groupme-bot-id'
    value: groupmeBotId
  }
  {
    name: 'groupme-callback-secret'
    value: groupmeCallbackSecret
  }
] : [], useGroupMeToken ? [
  {
    name: 'groupme-access-token'
    value: groupmeAccessToken
  }
] : [], useWeb ? [
  {
    name: 'web-auth-secret'
    value: webAuthSecret
  }
] : [])
var groupmeEnv = concat(useGroupMe ? [
  {
    name: 'GROUPME_BOT_ID'
    secretRef: 'groupme-bot-id'
  }
  {
    name: 'GROUPME_CALLBACK_SECRET'
    secretRef: 'groupme-callback-secret'
  }
  {
    name: 'GROUPME_GROUP_ID'
    value: groupmeGroupId
  }
] : [], useGroupMeToken ? [
  {
    name: 'GROUPME_ACCESS_TOKEN'
    secretRef: 'groupme-access-token'
  }
] : [])
// The web API (the page itself is on the Static Web App): browsers may call it from that origin only.
var webEnv = concat(useWeb ? [
  {
    name: 'VPN_LOCAL_AUTH_SECRET'
    secretRef: 'web-auth-secret'
  }
  {
    name: 'VPN_CORS_ORIGINS'
    value: webOrigin
  }
] : [], useEntra ? [
  {
    name: 'VPN_ENTRA_TENANT_ID'
    value: tenantId
  }
  {
    name: 'VPN_ENTRA_API_AUDIENCE'
    value: entraApiClientId
  }
  {
    name: 'VPN_ENTRA_SPA_CLIENT_ID'
    value: entraSpaClientId
  }
  {
    name: 'VPN_ENTRA_AUTHORITY'
    value: entraAuthority
  }
] : [])
var publicUrl = 'https://${name}.${managedEnv.properties.defaultDomain}'
// One set of settings for the app and the job: they are the same bot on the same store.
var settings = [
  {
    name: 'VPN_STORE'
    value: 'azure-tables'
  }
  {
    name: 'AZURE_TABLES_ENDPOINT'
    value: tableEndpoint
  }
  {
    name: 'VPN_TABLE_PREFIX'
    value: tablePrefix
  }
  {
    // azure-identity's default chain picks this user-assigned identity (Table Storage and ARM).
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'VPN_PROVIDER'
    value: 'azure'
  }
  {
    name: 'AZURE_SUBSCRIPTION_ID'
    value: subscription().subscriptionId
  }
  {
    name: 'AZURE_RESOURCE_GROUP'
    value: sessionResourceGroup
  }
  {
    name: 'AZURE_LOCATION'
    value: sessionLocation
  }
  {
    name: 'AZURE_VM_SIZE'
    value: vmSize
  }
  {
    name: 'VPN_INSTANCE_NAME'
    value: name
  }
  {
    // Which VMs, IPs and disks in the session group are this deployment's (reconcile removes only
    // those). Fixed here rather than the random id the store would keep, so that a new storage
    // account or tablePrefix still recognises, and cleans up, what this deployment left running.
    name: 'VPN_DEPLOYMENT_ID'
    value: '${name}-${uniqueString(resourceGroup().id)}'
  }
  {
    name: 'VPN_PUBLIC_URL'
    value: publicUrl
  }
  {
    name: 'MicrosoftAppId'
    value: identityClientId
  }
  {
    name: 'MicrosoftAppType'
    value: 'UserAssignedMSI'
  }
  {
    name: 'MicrosoftAppTenantId'
    value: tenantId
  }
  {
    name: 'TEAMS_ALLOWED_TENANTS'
    value: tenantId
  }
  {
    name: 'VPN_USERS'
    value: users
  }
  {
    name: 'VPN_ADMINS'
    value: admins
  }
  {
    name: 'WG_DNS'
    value: dns
  }
  {
    name: 'VPN_SESSION_MINUTES'
    value: string(sessionMinutes)
  }
  {
    name: 'VPN_MAX_SESSIONS'
    value: string(maxSessions)
  }
  {
    name: 'VPN_LOG_FORMAT'
    value: 'json'
  }
  {
    name: 'HOST'
    value: '0.0.0.0'
  }
  {
    name: 'PORT'
    value: string(port)
  }
  {
    name: 'VPN_METRICS_PORT'
    value: string(metricsPort)
  }
  {
    // The internal port mapping reaches the container's own address, not its loopback.
    name: 'VPN_METRICS_HOST'
    value: '0.0.0.0'
  }
  {
    // Container Apps' ingress (Envoy) is the one proxy in front of the app and appends the client's
    // address to X-Forwarded-For: trust that one hop, so the web channel's per-address limits count
    // clients, not the ingress (issue 18.9).
    name: 'VPN_TRUSTED_PROXIES'
    value: '1'
  }
]

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = if (enableLogAnalytics) {
  name: '${name}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource managedEnv 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${name}-env'
  location: location
  properties: {
    appLogsConfiguration: enableLogAnalytics ? {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    } : null
    zoneRedundant: false
    workloadProfiles: [
      {
        name: workloadProfile
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityResourceId}': {}
    }
  }
  properties: {
    managedEnvironmentId: managedEnv.id
    workloadProfileName: workloadProfile
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: port
        transport: 'auto'
        allowInsecure: false
        // /metrics: reachable by other apps in this environment (a Prometheus or OpenTelemetry
        // collector), never from the internet.
        additionalPortMappings: [
          {
            external: false
            targetPort: metricsPort
          }
        ]
      }
      registries: registries
      secrets: secrets
    }
    template: {
      containers: [
        {
          name: 'bot'
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat(settings, groupmeEnv, webEnv)
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: port
              }
              initialDelaySeconds: 1
              periodSeconds: 1
              timeoutSeconds: 1
              failureThreshold: 10
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: port
              }
              periodSeconds: 5
              timeoutSeconds: 3
              failureThreshold: 3
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: port
              }
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http'
            http: {
              metadata: {
                concurrentRequests: '20'
              }
            }
          }
        ]
      }
    }
  }
}

resource reap 'Microsoft.App/jobs@2024-03-01' = {
  name: '${name}-reap'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityResourceId}': {}
    }
  }
  properties: {
    environmentId: managedEnv.id
    workloadProfileName: workloadProfile
    configuration: {
      triggerType: 'Schedule'
      replicaTimeout: 300
      replicaRetryLimit: 0
      scheduleTriggerConfig: {
        cronExpression: reapSchedule
        parallelism: 1
        replicaCompletionCount: 1
      }
      registries: registries
      secrets: secrets
    }
    template: {
      containers: [
        {
          name: 'reap'
          image: image
          command: [
            'python'
            'app.py'
            'reap'
          ]
          resources: {
            cpu: json('0.25')
            memory: '0.5Gi'
          }
          env: concat(settings, groupmeEnv, webEnv)
        }
      ]
    }
  }
}

output fqdn string = app.properties.configuration.ingress.fqdn
output publicUrl string = publicUrl
output jobName string = reap.name
