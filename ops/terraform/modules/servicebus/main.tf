# The environment's Service Bus namespace and the four queues of the cloud architecture, as
# the binary's `servicebus` bus backend uses them (workers/src/bus/servicebus.rs):
# - Duplicate detection on every queue: sends are idempotent by message id. The outbox relay
#   resends a batch with the same ids after a crash between send and checkpoint, and relies
#   on the broker dropping what it already accepted within the history window.
# - No sessions, on purpose, including manager-callback-session-queue. This deviates from the
#   cloud architecture ("Session-enabled callbacks"): the binary talks to Service Bus over the
#   REST API, which cannot receive by session, and a non-session peek-lock on a
#   session-enabled queue is refused, so nothing could ever be read from it. Frames of a
#   streamed answer carry a sequence number and the consumer reorders them instead (DESIGN.md
#   decision 4). The queue keeps its name so the architecture's queue list still holds.
# Every queue dead-letters expired messages and, after max_delivery_count failed deliveries,
# poison ones; nothing is dropped silently. Both properties above can only be set when a
# queue is created: changing them replaces the queue (and loses what it holds).

locals {
  queues = toset([
    "manager-callback-queue",
    "engine-queue",
    "accessor-queue",
    "manager-callback-session-queue",
  ])
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
  requires_session                     = false
  requires_duplicate_detection         = true
  duplicate_detection_history_window   = var.duplicate_detection_history_window
  max_delivery_count                   = var.max_delivery_count
  dead_lettering_on_message_expiration = true
  lock_duration                        = var.lock_duration
  default_message_ttl                  = var.message_ttl
  max_size_in_megabytes                = 1024
}

# What the roles use: send and receive, nothing more. `teachin queues status` (and the
# engine's queue gauges, when they come) read the counts from the management API, which needs
# Manage, which this rule does not grant (ops/README.md, "Open points").
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
