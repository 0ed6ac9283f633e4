// Inside the session resource group: the shared VNet and NSG the bot would otherwise create on its
// first session (same names, same rules, same tags), and the bot's least-privilege custom role from
// docs/azure-role.json, defined for and assigned on this resource group only.
param instanceName string
param location string = resourceGroup().location
@description('Principal id of the bot\'s managed identity.')
param principalId string
@description('Create the VNet and NSG now (the bot creates them itself on the first session otherwise).')
param createNetwork bool = true
param vnetPrefix string = '10.200.0.0/24'
param wireguardPort int = 51820

var role = loadJsonContent('../../docs/azure-role.json')
var tags = {
  'managed-by': instanceName
  role: 'shared'
}

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-01-01' = if (createNetwork) {
  name: '${instanceName}-nsg-${location}'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-wireguard'
        properties: {
          protocol: 'Udp'
          direction: 'Inbound'
          access: 'Allow'
          priority: 100
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: string(wireguardPort)
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = if (createNetwork) {
  name: '${instanceName}-vnet-${location}'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetPrefix
      ]
    }
    subnets: [
      {
        name: 'vpn'
        properties: {
          addressPrefix: vnetPrefix
        }
      }
    ]
  }
}

// Custom role names are unique per tenant, not per subscription: a second deployment with the same
// group name in another subscription of the tenant (dev and prod) would fail with "A role definition
// cannot be updated with a name that already exists", so the name carries the subscription too.
resource operatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, role.Name)
  properties: {
    roleName: '${role.Name} (${resourceGroup().name}, ${subscription().subscriptionId})'
    description: role.Description
    type: 'CustomRole'
    permissions: [
      {
        actions: role.Actions
        notActions: role.NotActions
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

// No `scope:` property: the assignment lands on this module's scope, the session resource group.
resource operatorAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, operatorRole.id)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', operatorRole.name)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output roleName string = operatorRole.properties.roleName
