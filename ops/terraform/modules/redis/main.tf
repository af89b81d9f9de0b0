# Azure Cache for Redis, kept for the day the self-hosted StatefulSet is not enough (cloud
# architecture: "Migration Path"). The root instantiates it only when enable_azure_redis is
# set; then the chart takes ConnectionStrings__Redis from Key Vault (redis.source: keyVault).

resource "azurerm_redis_cache" "this" {
  name                          = var.name
  location                      = var.location
  resource_group_name           = var.resource_group_name
  capacity                      = var.capacity
  family                        = var.family
  sku_name                      = var.sku_name
  non_ssl_port_enabled          = false
  minimum_tls_version           = "1.2"
  public_network_access_enabled = true
  tags                          = var.tags
}
