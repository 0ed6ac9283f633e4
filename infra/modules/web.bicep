// The web page, off the backend: an Azure Static Web App (Free) serves web/ plus config.json, so a
// page load, an asset or a visitor who never signs in wakes no Container Apps replica. The bot's
// API allows this site's origin, and only it (VPN_CORS_ORIGINS). Why this host and not a storage
// static website: docs/decisions.md, "Deploy: the web page on Static Web Apps (Free)".
param name string
@description('Where the resource lives; the pages themselves are served from Microsoft\'s edge worldwide. Free plan regions: centralus, eastus2, eastasia, westeurope, westus2.')
param location string

resource site 'Microsoft.Web/staticSites@2023-12-01' = {
  name: name
  location: location
  sku: {
    name: 'Free'
    tier: 'Free'
  }
  properties: {
    // No preview environments: each would be another origin, which the API's CORS refuses.
    stagingEnvironmentPolicy: 'Disabled'
    allowConfigFileUpdates: true
  }
}

output name string = site.name
output hostname string = site.properties.defaultHostname
