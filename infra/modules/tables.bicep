// The store's tables, declared so that nothing creates them at start-up or on every reap run (sixteen
// create calls per process, ~475,000 billed 409s a month from the per-minute job otherwise).
// The names are bot/store/tables.py's TABLES behind VPN_TABLE_PREFIX (tests/test_infra.py checks).
@description('The storage account from groups.bicep (storage.bicep).')
param storageAccountName string
@description('VPN_TABLE_PREFIX.')
@minLength(1)
@maxLength(30)
param tablePrefix string

var tableNames = [
  'sessions'
  'slots'
  'seen'
  'audit'
  'claims'
  'workers'
  'addresses'
  'users'
  'attempts'
  'progress'
  'meta'
  'usage'
  'outbox'
  'due'
  'claimindex'
  'addressindex'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tableNames: {
  parent: tableService
  name: '${tablePrefix}${table}'
}]
