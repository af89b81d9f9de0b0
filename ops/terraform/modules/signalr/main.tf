# Azure SignalR Service for the browsers' realtime connections (DESIGN.md decision 5): with
# it configured, the manager's negotiate redirects clients here and pushes go through the
# service's REST API, so manager replicas hold no WebSockets.

resource "azurerm_signalr_service" "this" {
  name                = var.name
  location            = var.location
  resource_group_name = var.resource_group_name

  sku {
    name     = var.sku_name
    capacity = var.capacity
  }

  # Serverless: what the manager speaks (api/src/hub/azure.rs). It publishes through the
  # service's REST API and answers negotiate with a redirect and an access token; it never
  # holds a server connection to the service, which Default mode would require (with no hub
  # server connected, Default mode refuses the clients). ops/check reads the mode from the code.
  service_mode                  = "Serverless"
  connectivity_logs_enabled     = true
  messaging_logs_enabled        = false
  public_network_access_enabled = true
  local_auth_enabled            = true

  cors {
    allowed_origins = var.allowed_origins
  }

  tags = var.tags
}
