# Inputs of one environment. terraform.tfvars.dev / .prod / .template set them; API keys come
# from the workflow as TF_VAR_* secrets, never from a file.

variable "subscription_id" {
  description = "Azure subscription that holds the environment."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.subscription_id))
    error_message = "subscription_id must be a GUID."
  }
}

variable "environment_name" {
  description = "The environment: dev, prod, or a dynamic one (feature-x, pr-123). Names the namespace, database and resources."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.environment_name))
    error_message = "environment_name must be 3-20 characters: lowercase letters, digits and '-', starting with a letter."
  }
}

variable "shared_environment_name" {
  description = "The environment whose cluster and database server are shared when use_shared_* is true (the master environment)."
  type        = string
  default     = "dev"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.shared_environment_name))
    error_message = "shared_environment_name must be an environment name."
  }
}

variable "use_shared_aks" {
  description = "Run on the shared environment's AKS cluster (read through a data source) instead of creating one."
  type        = bool
}

variable "use_shared_postgres" {
  description = "Put this environment's database on the shared environment's PostgreSQL server instead of creating a server."
  type        = bool
}

variable "use_shared_redis" {
  description = "Use the shared environment's Redis. Redis is self-hosted per cluster (Helm), so this only matters with enable_azure_redis."
  type        = bool
  default     = true
}

variable "enable_azure_redis" {
  description = "Create Azure Cache for Redis (the redis module) instead of relying on the self-hosted StatefulSet."
  type        = bool
  default     = false
}

variable "location" {
  description = "Region of the environment's resources."
  type        = string
  default     = "westeurope"

  validation {
    condition     = contains(["westeurope", "northeurope", "israelcentral"], var.location)
    error_message = "location must be westeurope, northeurope or israelcentral."
  }
}

variable "postgres_location" {
  description = "Region of the PostgreSQL server (Israel Central for data residency)."
  type        = string
  default     = "israelcentral"

  validation {
    condition     = contains(["israelcentral", "westeurope", "northeurope"], var.postgres_location)
    error_message = "postgres_location must be israelcentral, westeurope or northeurope."
  }
}

variable "kubernetes_version" {
  description = "AKS Kubernetes minor version; ops/check validates the chart's objects against the same minor."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version such as 1.33."
  }
}

variable "aks_sku_tier" {
  description = "AKS control plane tier: Free or Standard (SLA)."
  type        = string
  default     = "Free"

  validation {
    condition     = contains(["Free", "Standard"], var.aks_sku_tier)
    error_message = "aks_sku_tier must be Free or Standard."
  }
}

variable "availability_zones" {
  description = "Zones for the node pools."
  type        = list(string)
  default     = ["1", "2", "3"]

  validation {
    condition     = length(var.availability_zones) > 0 && alltrue([for z in var.availability_zones : contains(["1", "2", "3"], z)])
    error_message = "availability_zones must be a non-empty subset of 1, 2, 3."
  }
}

variable "aks_system_node_vm_size" {
  description = "VM size of the system node pool."
  type        = string
  default     = "Standard_D2ds_v5"

  validation {
    condition     = can(regex("^Standard_", var.aks_system_node_vm_size))
    error_message = "aks_system_node_vm_size must be an Azure VM size (Standard_...)."
  }
}

variable "aks_user_node_vm_size" {
  description = "VM size of the workload node pool."
  type        = string
  default     = "Standard_D4ds_v5"

  validation {
    condition     = can(regex("^Standard_", var.aks_user_node_vm_size))
    error_message = "aks_user_node_vm_size must be an Azure VM size (Standard_...)."
  }
}

variable "aks_user_node_min_count" {
  description = "Minimum workload nodes (0 lets an idle non-prod pool empty out)."
  type        = number
  default     = 1

  validation {
    condition     = var.aks_user_node_min_count >= 0 && var.aks_user_node_min_count <= 100
    error_message = "aks_user_node_min_count must be between 0 and 100."
  }
}

variable "aks_user_node_max_count" {
  description = "Maximum workload nodes."
  type        = number
  default     = 5

  validation {
    condition     = var.aks_user_node_max_count >= 1 && var.aks_user_node_max_count <= 100
    error_message = "aks_user_node_max_count must be between 1 and 100."
  }
}

variable "enable_spot_nodes" {
  description = "Run workloads on spot VMs (non-prod only; evictions are acceptable there)."
  type        = bool
  default     = false
}

variable "aks_api_server_authorized_ip_ranges" {
  description = "CIDRs allowed to reach the API server; empty for none (RBAC still applies)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.aks_api_server_authorized_ip_ranges : can(cidrhost(c, 0))])
    error_message = "Every entry must be a CIDR such as 203.0.113.0/24."
  }
}

variable "postgres_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "16"

  validation {
    condition     = contains(["15", "16", "17"], var.postgres_version)
    error_message = "postgres_version must be 15, 16 or 17."
  }
}

variable "postgres_sku_name" {
  description = "PostgreSQL compute SKU."
  type        = string
  default     = "B_Standard_B1ms"

  validation {
    condition     = can(regex("^(B|GP|MO)_Standard_", var.postgres_sku_name))
    error_message = "postgres_sku_name must be a Flexible Server SKU (B_/GP_/MO_Standard_...)."
  }
}

variable "postgres_storage_mb" {
  description = "Initial PostgreSQL storage in MB."
  type        = number
  default     = 32768

  validation {
    condition     = contains([32768, 65536, 131072, 262144, 524288, 1048576], var.postgres_storage_mb)
    error_message = "postgres_storage_mb must be a Flexible Server storage size (32768, 65536, ...)."
  }
}

variable "postgres_admin_login" {
  description = "Administrator login of a server this environment creates."
  type        = string
  default     = "teachinadmin"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{2,30}$", var.postgres_admin_login)) && !contains(["admin", "postgres", "azure_superuser"], var.postgres_admin_login)
    error_message = "postgres_admin_login must be 3-31 lowercase characters and not a reserved name."
  }
}

variable "postgres_high_availability" {
  description = "Zone-redundant standby (prod)."
  type        = bool
  default     = false
}

variable "postgres_geo_redundant_backup" {
  description = "Geo-redundant backups (prod)."
  type        = bool
  default     = false
}

variable "postgres_backup_retention_days" {
  description = "Point-in-time restore window in days."
  type        = number
  default     = 7

  validation {
    condition     = var.postgres_backup_retention_days >= 7 && var.postgres_backup_retention_days <= 35
    error_message = "postgres_backup_retention_days must be between 7 and 35."
  }
}

variable "servicebus_sku" {
  description = "Service Bus tier: Standard or Premium (Basic lacks duplicate detection)."
  type        = string
  default     = "Standard"

  validation {
    condition     = contains(["Standard", "Premium"], var.servicebus_sku)
    error_message = "servicebus_sku must be Standard or Premium."
  }
}

variable "servicebus_max_delivery_count" {
  description = "Deliveries before a message is dead-lettered."
  type        = number
  default     = 10

  validation {
    condition     = var.servicebus_max_delivery_count >= 1 && var.servicebus_max_delivery_count <= 2000
    error_message = "servicebus_max_delivery_count must be between 1 and 2000."
  }
}

variable "signalr_sku" {
  description = "Azure SignalR SKU."
  type        = string
  default     = "Free_F1"

  validation {
    condition     = contains(["Free_F1", "Standard_S1", "Premium_P1"], var.signalr_sku)
    error_message = "signalr_sku must be Free_F1, Standard_S1 or Premium_P1."
  }
}

variable "signalr_capacity" {
  description = "Azure SignalR units."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2, 5, 10, 20, 50, 100], var.signalr_capacity)
    error_message = "signalr_capacity must be 1, 2, 5, 10, 20, 50 or 100."
  }
}

variable "storage_replication_type" {
  description = "Replication of the avatars storage account."
  type        = string
  default     = "LRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "GZRS", "RAGRS", "RAGZRS"], var.storage_replication_type)
    error_message = "storage_replication_type must be LRS, ZRS, GRS, GZRS, RAGRS or RAGZRS."
  }
}

variable "frontend_apps" {
  description = "The portals, one Static Web App each."
  type        = list(string)
  default     = ["student", "teacher", "admin"]

  validation {
    condition     = length(var.frontend_apps) > 0 && alltrue([for a in var.frontend_apps : can(regex("^[a-z]+$", a))])
    error_message = "frontend_apps must be lowercase names."
  }
}

variable "static_web_app_sku" {
  description = "Static Web Apps tier."
  type        = string
  default     = "Free"

  validation {
    condition     = contains(["Free", "Standard"], var.static_web_app_sku)
    error_message = "static_web_app_sku must be Free or Standard."
  }
}

variable "cors_allowed_origins" {
  description = "Portal origins allowed by SignalR and Blob CORS."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for o in var.cors_allowed_origins : can(regex("^https?://[a-z0-9.-]+(:[0-9]+)?$", o))])
    error_message = "Each origin is scheme://host[:port] without a path."
  }
}

variable "log_retention_days" {
  description = "Days logs and telemetry are kept."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be between 30 and 730."
  }
}

variable "log_daily_quota_gb" {
  description = "Daily Log Analytics ingestion cap in GB (-1: none)."
  type        = number
  default     = 5

  validation {
    condition     = var.log_daily_quota_gb == -1 || var.log_daily_quota_gb > 0
    error_message = "log_daily_quota_gb must be -1 or positive."
  }
}

variable "key_vault_purge_protection" {
  description = "Purge protection on the Key Vault (prod)."
  type        = bool
  default     = false
}

variable "azure_openai_api_key" {
  description = "Azure OpenAI key (AZURE_OPENAI_API_KEY); passed as TF_VAR_azure_openai_api_key."
  type        = string
  sensitive   = true
  default     = "not-configured"

  validation {
    condition     = length(var.azure_openai_api_key) > 0
    error_message = "azure_openai_api_key must not be empty (use not-configured)."
  }
}

variable "tavily_api_key" {
  description = "Tavily web search key (TAVILY_API_KEY)."
  type        = string
  sensitive   = true
  default     = "not-configured"

  validation {
    condition     = length(var.tavily_api_key) > 0
    error_message = "tavily_api_key must not be empty (use not-configured)."
  }
}

variable "speech_key" {
  description = "Azure Speech key (Speech__Key)."
  type        = string
  sensitive   = true
  default     = "not-configured"

  validation {
    condition     = length(var.speech_key) > 0
    error_message = "speech_key must not be empty (use not-configured)."
  }
}

variable "brevo_smtp_user" {
  description = "Brevo SMTP user (BREVO_SMTP_USER)."
  type        = string
  sensitive   = true
  default     = "not-configured"

  validation {
    condition     = length(var.brevo_smtp_user) > 0
    error_message = "brevo_smtp_user must not be empty (use not-configured)."
  }
}

variable "brevo_smtp_password" {
  description = "Brevo SMTP password (BREVO_SMTP_PASSWORD)."
  type        = string
  sensitive   = true
  default     = "not-configured"

  validation {
    condition     = length(var.brevo_smtp_password) > 0
    error_message = "brevo_smtp_password must not be empty (use not-configured)."
  }
}

variable "tags" {
  description = "Extra tags for every resource (environment and managed-by are always set)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) <= 512 && length(v) <= 256])
    error_message = "Azure tag names are at most 512 characters and values at most 256."
  }
}

variable "enable_azure_signalr" {
  description = "Create Azure SignalR Service (Serverless mode) for this environment. Must match the chart's azureSignalR.enabled in the environment's values file: environments whose manager serves its own hub (local-hub mode) do not pay for an unused service."
  type        = bool
  default     = false
}

variable "protect_stateful_resources" {
  description = "Create the stateful resources (database, storage account, Key Vault, Service Bus namespace) with lifecycle.prevent_destroy: true for dev and prod, false for dynamic environments, which are destroyed when their pull request closes."
  type        = bool
  default     = true
}

variable "aks_system_pool_critical_only" {
  description = "Taint the system pool CriticalAddonsOnly. Only where a regular (untainted) user pool exists for the platform charts and Redis, which tolerate nothing: prod. Dev's only user pool is spot (tainted), so its system pool must take them."
  type        = bool
  default     = true
}


variable "container_registry_name" {
  description = "Azure Container Registry the image is pushed to and every cluster pulls from (build-and-push's REGISTRY, the chart's image.repository host)."
  type        = string
  default     = "teachinacr"

  validation {
    condition     = can(regex("^[a-zA-Z0-9]{5,50}$", var.container_registry_name))
    error_message = "container_registry_name must be 5-50 letters and digits."
  }
}

variable "create_container_registry" {
  description = "This environment owns the registry (dev, applied first); the others read it with a data source and grant their kubelet AcrPull on it."
  type        = bool
  default     = false
}

variable "postgres_role_connection_limit" {
  description = "Connections the environment's role may hold on the (possibly shared) server: every replica's pool (config.dbMaxConnections), the jobs and KEDA's scaler."
  type        = number
  default     = 60

  validation {
    condition     = var.postgres_role_connection_limit >= 10
    error_message = "postgres_role_connection_limit must be at least 10."
  }
}
