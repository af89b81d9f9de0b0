# The registry build-and-push pushes the `teachin` image to. Standard SKU: enough storage and
# throughput for one image; no admin user (pushes authenticate with the workflow's OIDC
# identity, pulls with each cluster's kubelet identity through AcrPull).

resource "azurerm_container_registry" "this" {
  name                          = var.name
  location                      = var.location
  resource_group_name           = var.resource_group_name
  sku                           = "Standard"
  admin_enabled                 = false
  public_network_access_enabled = true
  anonymous_pull_enabled        = false
  tags                          = var.tags
}
