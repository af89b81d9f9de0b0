# PostgreSQL Flexible Server and the environment's database on it.
# create_server = true (dev, prod): this environment owns the server: zone-redundant HA in
# prod, backups, a firewall rule per AKS egress IP, and a generated admin password.
# create_server = false (dynamic environments): dev's server is read through a data source
# and only this environment's database is created on it (cloud architecture: "one database
# per environment" on the shared server).

resource "random_password" "admin" {
  count   = var.create_server ? 1 : 0
  length  = 32
  special = false
}

resource "azurerm_postgresql_flexible_server" "this" {
  count = var.create_server ? 1 : 0

  name                = var.server_name
  resource_group_name = var.resource_group_name
  location            = var.location
  version             = var.postgres_version
  sku_name            = var.sku_name
  storage_mb          = var.storage_mb
  auto_grow_enabled   = true
  zone                = "1"

  administrator_login    = var.admin_login
  administrator_password = random_password.admin[0].result

  backup_retention_days        = var.backup_retention_days
  geo_redundant_backup_enabled = var.geo_redundant_backup

  # Reached over its public endpoint, closed by the firewall to all but the cluster's egress.
  public_network_access_enabled = true

  dynamic "high_availability" {
    for_each = var.high_availability ? [1] : []
    content {
      mode                      = "ZoneRedundant"
      standby_availability_zone = "2"
    }
  }

  authentication {
    password_auth_enabled         = true
    active_directory_auth_enabled = false
  }

  lifecycle {
    # Only dev and prod own a server; it holds every environment's database.
    prevent_destroy = true
    # Azure may swap primary and standby zones on failover; that is not drift to undo.
    ignore_changes = [zone, high_availability[0].standby_availability_zone]
  }

  tags = var.tags
}

resource "azurerm_postgresql_flexible_server_firewall_rule" "aks" {
  count = var.create_server ? length(var.allowed_ip_addresses) : 0

  name             = "aks-egress-${count.index}"
  server_id        = azurerm_postgresql_flexible_server.this[0].id
  start_ip_address = var.allowed_ip_addresses[count.index]
  end_ip_address   = var.allowed_ip_addresses[count.index]
}

data "azurerm_postgresql_flexible_server" "shared" {
  count = var.create_server ? 0 : 1

  name                = var.server_name
  resource_group_name = var.resource_group_name
}

locals {
  server_id      = var.create_server ? azurerm_postgresql_flexible_server.this[0].id : data.azurerm_postgresql_flexible_server.shared[0].id
  fqdn           = var.create_server ? azurerm_postgresql_flexible_server.this[0].fqdn : data.azurerm_postgresql_flexible_server.shared[0].fqdn
  admin_login    = var.create_server ? var.admin_login : data.azurerm_postgresql_flexible_server.shared[0].administrator_login
  admin_password = var.create_server ? random_password.admin[0].result : ""
}

# Two blocks of one resource: prevent_destroy must be a literal, so dev and prod (protect =
# true) get the protected one and dynamic environments, destroyed when their pull request
# closes, the other. ops/check verifies which one each environment instantiates.
resource "azurerm_postgresql_flexible_server_database" "protected" {
  count = var.protect ? 1 : 0

  name      = var.database_name
  server_id = local.server_id
  charset   = "UTF8"
  collation = "en_US.utf8"

  lifecycle {
    prevent_destroy = true
  }
}

resource "azurerm_postgresql_flexible_server_database" "disposable" {
  count = var.protect ? 0 : 1

  name      = var.database_name
  server_id = local.server_id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

locals {
  database = var.protect ? azurerm_postgresql_flexible_server_database.protected[0] : azurerm_postgresql_flexible_server_database.disposable[0]
}
