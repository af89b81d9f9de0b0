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

  # Default mode: the manager is the hub server the service talks to.
  service_mode                  = "Default"
  connectivity_logs_enabled     = true
  messaging_logs_enabled        = false
  public_network_access_enabled = true
  local_auth_enabled            = true

  cors {
    allowed_origins = var.allowed_origins
  }

  tags = var.tags
}
