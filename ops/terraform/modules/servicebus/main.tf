# The environment's Service Bus namespace and the four queues of the cloud architecture, as
# the binary's `servicebus` bus backend uses them (workers/src/bus/servicebus.rs):
# - Duplicate detection on every queue: sends are idempotent by message id. The outbox relay
#   resends a batch with the same ids after a crash between send and checkpoint, and relies
#   on the broker dropping what it already accepted within the history window.
# - No sessions, on purpose, including manager-callback-session-queue. This deviates from the
#   cloud architecture ("Session-enabled callbacks"): the binary talks to Service Bus over the
#   REST API, which cannot receive by session, and a non-session peek-lock on a
#   session-enabled queue is refused, so nothing could ever be read from it. Frames still
#   carry the tutor session as the real SessionId, and the adapter holds session leases in
#   PostgreSQL's bus_sessions (one manager replica per session at a time, as a session
#   receiver would); a sequence number lets the consumer reorder what a hand-over brings
#   early. The queue keeps its name so the architecture's queue list still holds.
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

# Two blocks of one resource: prevent_destroy must be a literal, so dev and prod (protect =
# true) get the protected one and dynamic environments, destroyed when their pull request
# closes, the other. ops/check verifies which one each environment instantiates.
resource "azurerm_servicebus_namespace" "protected" {
  count = var.protect ? 1 : 0

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

  lifecycle {
    prevent_destroy = true
  }
}

resource "azurerm_servicebus_namespace" "disposable" {
  count = var.protect ? 0 : 1

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

locals {
  namespace = var.protect ? azurerm_servicebus_namespace.protected[0] : azurerm_servicebus_namespace.disposable[0]
}

resource "azurerm_servicebus_queue" "this" {
  for_each = local.queues

  name                                 = each.key
  namespace_id                         = local.namespace.id
  requires_session                     = false
  requires_duplicate_detection         = true
  duplicate_detection_history_window   = var.duplicate_detection_history_window
  max_delivery_count                   = var.max_delivery_count
  dead_lettering_on_message_expiration = true
  lock_duration                        = var.lock_duration
  default_message_ttl                  = var.message_ttl
  max_size_in_megabytes                = 1024
}

# What the roles use: send and receive, nothing more. Queue statistics come from the
# management API, which needs Manage: the `stats` rule below, under its own name.
resource "azurerm_servicebus_namespace_authorization_rule" "app" {
  name         = "teachin-app"
  namespace_id = local.namespace.id
  listen       = true
  send         = true
  manage       = false
}

# What KEDA uses: reading queue runtime properties (message counts) needs Manage.
resource "azurerm_servicebus_namespace_authorization_rule" "keda" {
  name         = "keda-monitor"
  namespace_id = local.namespace.id
  listen       = true
  send         = true
  manage       = true
}

# Queue statistics (active and dead-letter counts, the oldest message): the management API
# needs Manage, and Service Bus grants Manage only with Listen and Send. Scoped to this
# namespace; the chart gives it (ServiceBus__StatsConnectionString) only to what reports
# statistics, the manager's and engine's gauges and `teachin queues status`.
resource "azurerm_servicebus_namespace_authorization_rule" "stats" {
  name         = "teachin-stats"
  namespace_id = local.namespace.id
  listen       = true
  send         = true
  manage       = true
}
