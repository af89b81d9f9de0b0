# The environment's Service Bus namespace and the four queues of the cloud architecture.
# manager-callback-session-queue is session-enabled (frames of one streamed answer stay in
# order per session). Every queue dead-letters expired messages and, after
# max_delivery_count failed deliveries, poison ones; nothing is dropped silently.

locals {
  queues = {
    "manager-callback-queue"         = { requires_session = false }
    "engine-queue"                   = { requires_session = false }
    "accessor-queue"                 = { requires_session = false }
    "manager-callback-session-queue" = { requires_session = true }
  }
}

resource "azurerm_servicebus_namespace" "this" {
  name                          = var.name
  location                      = var.location
  resource_group_name           = var.resource_group_name
  sku                           = var.sku
  capacity                      = var.sku == "Premium" ? var.premium_messaging_units : 0
  premium_messaging_partitions  = var.sku == "Premium" ? 1 : 0
  minimum_tls_version           = "1.2"
  public_network_access_enabled = true
  # The binary and KEDA authenticate with SAS connection strings from Key Vault.
  local_auth_enabled = true

  identity {
    type = "SystemAssigned"
  }

  tags = var.tags
}

resource "azurerm_servicebus_queue" "this" {
  for_each = local.queues

  name                                 = each.key
  namespace_id                         = azurerm_servicebus_namespace.this.id
  requires_session                     = each.value.requires_session
  max_delivery_count                   = var.max_delivery_count
  dead_lettering_on_message_expiration = true
  lock_duration                        = var.lock_duration
  default_message_ttl                  = var.message_ttl
  max_size_in_megabytes                = 1024
}

# What the roles use: send and receive, nothing more.
resource "azurerm_servicebus_namespace_authorization_rule" "app" {
  name         = "teachin-app"
  namespace_id = azurerm_servicebus_namespace.this.id
  listen       = true
  send         = true
  manage       = false
}

# What KEDA uses: reading queue runtime properties (message counts) needs Manage.
resource "azurerm_servicebus_namespace_authorization_rule" "keda" {
  name         = "keda-monitor"
  namespace_id = azurerm_servicebus_namespace.this.id
  listen       = true
  send         = true
  manage       = true
}
