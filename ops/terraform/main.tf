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
  system_pool_critical_only       = var.aks_system_pool_critical_only
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

# ---------------------------------------------------------------- container registry

# One registry for every environment (build-and-push pushes teachin:<sha> once; dev, dynamic
# environments and prod deploy the same image). dev owns it and is applied first; the others
# read it. Every cluster's kubelet identity may pull from it (AcrPull), nothing more.
module "container_registry" {
  count  = var.create_container_registry ? 1 : 0
  source = "./modules/container_registry"

  name                = var.container_registry_name
  location            = var.location
  resource_group_name = azurerm_resource_group.env.name
  tags                = local.tags
}

data "azurerm_container_registry" "shared" {
  count = var.create_container_registry ? 0 : 1

  name                = var.container_registry_name
  resource_group_name = module.naming_shared.resource_group_name
}

locals {
  container_registry_id = var.create_container_registry ? module.container_registry[0].id : data.azurerm_container_registry.shared[0].id
}

# A cluster this environment owns pulls the image with its kubelet identity (dynamic
# environments run on dev's cluster, which has it already).
resource "azurerm_role_assignment" "kubelet_acr_pull" {
  count = var.use_shared_aks ? 0 : 1

  scope                            = local.container_registry_id
  role_definition_name             = "AcrPull"
  principal_id                     = module.aks[0].kubelet_object_id
  skip_service_principal_aad_check = true
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

module "postgresql" {
  source = "./modules/postgresql"

  protect = var.protect_stateful_resources

  create_server         = !var.use_shared_postgres
  server_name           = var.use_shared_postgres ? module.naming_shared.postgres_server_name : module.naming.postgres_server_name
  resource_group_name   = var.use_shared_postgres ? module.naming_shared.resource_group_name : azurerm_resource_group.env.name
  location              = var.postgres_location
  postgres_version      = var.postgres_version
  sku_name              = var.postgres_sku_name
  storage_mb            = var.postgres_storage_mb
  admin_login           = var.postgres_admin_login
  backup_retention_days = var.postgres_backup_retention_days
  geo_redundant_backup  = var.postgres_geo_redundant_backup
  high_availability     = var.postgres_high_availability
  allowed_ip_addresses  = [local.aks.egress_ip]
  database_name         = var.environment_name
  tags                  = local.tags
}

# What the application connects as: the environment's own role, never the admin login.
module "database_role" {
  source = "./modules/database_role"

  role_name         = "${replace(var.environment_name, "-", "_")}_app"
  database_name     = module.postgresql.database_name
  host              = module.postgresql.fqdn
  connection_limit  = var.postgres_role_connection_limit
  admin_namespace   = module.k8s_manifests.db_admin_namespace
  admin_secret_name = "postgres-admin"
  psql_image        = "docker.io/library/postgres:17-alpine"

  depends_on = [kubernetes_secret_v1.postgres_admin]
}

# The server's owner puts its admin credentials where the role Jobs of every environment on
# its cluster read them: the db-admin namespace, which no application release uses.
resource "kubernetes_secret_v1" "postgres_admin" {
  count = var.use_shared_postgres ? 0 : 1

  metadata {
    name      = "postgres-admin"
    namespace = module.k8s_manifests.db_admin_namespace
  }
  data = {
    username = var.postgres_admin_login
    password = module.postgresql.admin_password
  }
}

# ---------------------------------------------------------------- per-environment services

# Lock span and delivery budget: the chart's bus.postgres.lockSeconds / maxDeliveryCount mirror
# them for the PostgreSQL backend. Resent message ids are dropped for as long as the original
# may still be waiting (the TTL).
module "servicebus" {
  source = "./modules/servicebus"

  protect = var.protect_stateful_resources

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

# Only where the chart runs the manager with Azure SignalR (values.<env>.yaml
# azureSignalR.enabled; ops/check compares the two): dev and dynamic environments serve the
# hub from the manager itself and would never use the service.
module "signalr" {
  count  = var.enable_azure_signalr ? 1 : 0
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

  protect = var.protect_stateful_resources

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

  identity_name        = module.naming.eso_identity_name
  location             = var.location
  resource_group_name  = azurerm_resource_group.env.name
  key_vault_id         = module.keyvault.id
  oidc_issuer_url      = local.aks.oidc_issuer_url
  namespace            = module.k8s_manifests.namespace
  service_account_name = "teachin-keyvault-reader"
  tags                 = local.tags
}
