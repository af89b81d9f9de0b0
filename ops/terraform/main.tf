# One environment of Teachin (cloud architecture: "Deployment Architecture").
# dev and prod own everything. A dynamic environment (terraform.tfvars.template) creates its
# own resource group, Service Bus, SignalR, storage, Key Vault and database, and shares dev's
# AKS cluster and PostgreSQL server: use_shared_aks / use_shared_postgres switch those from
# resources (count 1) to data sources reading dev's (count 1 on the other side). ops/check
# evaluates every count to prove each flag really switches them.

module "naming" {
  source           = "./modules/naming"
  environment_name = var.environment_name
}

# Names of the master environment's resources, read when sharing.
module "naming_shared" {
  source           = "./modules/naming"
  environment_name = var.shared_environment_name
}

locals {
  tags = merge(var.tags, {
    environment = var.environment_name
    managed-by  = "terraform"
    project     = "teachin"
  })
}

resource "azurerm_resource_group" "env" {
  name     = module.naming.resource_group_name
  location = var.location
  tags     = local.tags
}

module "log_analytics" {
  source              = "./modules/log_analytics"
  name                = module.naming.log_analytics_name
  location            = var.location
  resource_group_name = azurerm_resource_group.env.name
  retention_in_days   = var.log_retention_days
  daily_quota_gb      = var.log_daily_quota_gb
  tags                = local.tags
}

# ---------------------------------------------------------------- AKS: own or shared

module "aks" {
  count  = var.use_shared_aks ? 0 : 1
  source = "./modules/aks"

  name                            = module.naming.aks_name
  location                        = var.location
  resource_group_name             = azurerm_resource_group.env.name
  egress_ip_name                  = module.naming.aks_egress_ip_name
  kubernetes_version              = var.kubernetes_version
  sku_tier                        = var.aks_sku_tier
  zones                           = var.availability_zones
  system_node_vm_size             = var.aks_system_node_vm_size
  system_node_min_count           = 1
  system_node_max_count           = 3
  user_node_vm_size               = var.aks_user_node_vm_size
  user_node_min_count             = var.aks_user_node_min_count
  user_node_max_count             = var.aks_user_node_max_count
  enable_spot_nodes               = var.enable_spot_nodes
  api_server_authorized_ip_ranges = var.aks_api_server_authorized_ip_ranges
  log_analytics_workspace_id      = module.log_analytics.id
  tags                            = local.tags
}

data "azurerm_kubernetes_cluster" "shared" {
  count = var.use_shared_aks ? 1 : 0

  name                = module.naming_shared.aks_name
  resource_group_name = module.naming_shared.resource_group_name
}

data "azurerm_public_ip" "shared_aks_egress" {
  count = var.use_shared_aks ? 1 : 0

  name                = module.naming_shared.aks_egress_ip_name
  resource_group_name = module.naming_shared.resource_group_name
}

locals {
  # The cluster this environment runs on, whichever way it was obtained.
  aks = var.use_shared_aks ? {
    id                     = data.azurerm_kubernetes_cluster.shared[0].id
    host                   = data.azurerm_kubernetes_cluster.shared[0].kube_config[0].host
    client_certificate     = data.azurerm_kubernetes_cluster.shared[0].kube_config[0].client_certificate
    client_key             = data.azurerm_kubernetes_cluster.shared[0].kube_config[0].client_key
    cluster_ca_certificate = data.azurerm_kubernetes_cluster.shared[0].kube_config[0].cluster_ca_certificate
    oidc_issuer_url        = data.azurerm_kubernetes_cluster.shared[0].oidc_issuer_url
    egress_ip              = data.azurerm_public_ip.shared_aks_egress[0].ip_address
    } : {
    id                     = module.aks[0].id
    host                   = module.aks[0].host
    client_certificate     = module.aks[0].client_certificate
    client_key             = module.aks[0].client_key
    cluster_ca_certificate = module.aks[0].cluster_ca_certificate
    oidc_issuer_url        = module.aks[0].oidc_issuer_url
    egress_ip              = module.aks[0].egress_ip_address
  }
}

# ---------------------------------------------------------------- PostgreSQL: own or shared

# The shared server's admin password, kept in the master environment's Key Vault.
data "azurerm_key_vault" "shared" {
  count = var.use_shared_postgres ? 1 : 0

  name                = module.naming_shared.key_vault_name
  resource_group_name = module.naming_shared.resource_group_name
}

data "azurerm_key_vault_secret" "shared_postgres_admin_password" {
  count = var.use_shared_postgres ? 1 : 0

  name         = "postgres-admin-password"
  key_vault_id = data.azurerm_key_vault.shared[0].id
}

module "postgresql" {
  source = "./modules/postgresql"

  create_server         = !var.use_shared_postgres
  server_name           = var.use_shared_postgres ? module.naming_shared.postgres_server_name : module.naming.postgres_server_name
  resource_group_name   = var.use_shared_postgres ? module.naming_shared.resource_group_name : azurerm_resource_group.env.name
  location              = var.postgres_location
  postgres_version      = var.postgres_version
  sku_name              = var.postgres_sku_name
  storage_mb            = var.postgres_storage_mb
  admin_login           = var.postgres_admin_login
  shared_admin_password = var.use_shared_postgres ? data.azurerm_key_vault_secret.shared_postgres_admin_password[0].value : ""
  backup_retention_days = var.postgres_backup_retention_days
  geo_redundant_backup  = var.postgres_geo_redundant_backup
  high_availability     = var.postgres_high_availability
  allowed_ip_addresses  = [local.aks.egress_ip]
  database_name         = var.environment_name
  tags                  = local.tags
}

# ---------------------------------------------------------------- per-environment services

# Lock span and delivery budget: the chart's bus.postgres.lockSeconds / maxDeliveryCount mirror
# them for the PostgreSQL backend. Resent message ids are dropped for as long as the original
# may still be waiting (the TTL).
module "servicebus" {
  source = "./modules/servicebus"

  name                               = module.naming.servicebus_namespace_name
  location                           = var.location
  resource_group_name                = azurerm_resource_group.env.name
  sku                                = var.servicebus_sku
  premium_messaging_units            = 1
  max_delivery_count                 = var.servicebus_max_delivery_count
  lock_duration                      = "PT1M"
  message_ttl                        = "P1D"
  duplicate_detection_history_window = "P1D"
  tags                               = local.tags
}

module "signalr" {
  source = "./modules/signalr"

  name                = module.naming.signalr_name
  location            = var.location
  resource_group_name = azurerm_resource_group.env.name
  sku_name            = var.signalr_sku
  capacity            = var.signalr_capacity
  allowed_origins     = var.cors_allowed_origins
  tags                = local.tags
}

module "storage" {
  source = "./modules/storage"

  name                = module.naming.storage_account_name
  location            = var.location
  resource_group_name = azurerm_resource_group.env.name
  replication_type    = var.storage_replication_type
  container_name      = "avatars"
  soft_delete_days    = 7
  allowed_origins     = var.cors_allowed_origins
  tags                = local.tags
}

module "monitoring" {
  source = "./modules/monitoring"

  name_prefix                = module.naming.app_insights_prefix
  location                   = var.location
  resource_group_name        = azurerm_resource_group.env.name
  log_analytics_workspace_id = module.log_analytics.id
  frontend_apps              = var.frontend_apps
  retention_in_days          = var.log_retention_days
  tags                       = local.tags
}

module "frontend" {
  source = "./modules/frontend"

  name_prefix         = module.naming.static_web_app_prefix
  location            = var.location
  resource_group_name = azurerm_resource_group.env.name
  apps                = var.frontend_apps
  sku                 = var.static_web_app_sku
  tags                = local.tags
}

# Azure Cache for Redis: kept, off unless enable_azure_redis (self-hosted Redis is the default).
module "redis" {
  count  = var.enable_azure_redis && !var.use_shared_redis ? 1 : 0
  source = "./modules/redis"

  name                = module.naming.redis_cache_name
  location            = var.location
  resource_group_name = azurerm_resource_group.env.name
  sku_name            = "Basic"
  family              = "C"
  capacity            = 0
  tags                = local.tags
}

# ---------------------------------------------------------------- Kubernetes side

module "k8s_manifests" {
  source = "./modules/k8s_manifests"

  namespace                = module.naming.namespace
  manage_shared_namespaces = !var.use_shared_aks
  default_limits           = { cpu = "500m", memory = "256Mi" }
  default_requests         = { cpu = "50m", memory = "64Mi" }
}

module "clustersecretstore" {
  source = "./modules/clustersecretstore"

  name                 = module.naming.cluster_secret_store_name
  identity_name        = module.naming.eso_identity_name
  location             = var.location
  resource_group_name  = azurerm_resource_group.env.name
  key_vault_id         = module.keyvault.id
  key_vault_uri        = module.keyvault.vault_uri
  tenant_id            = module.keyvault.tenant_id
  oidc_issuer_url      = local.aks.oidc_issuer_url
  namespace            = module.k8s_manifests.namespace
  service_account_name = "teachin-keyvault-reader"
  tags                 = local.tags
}
