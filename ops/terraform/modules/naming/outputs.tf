output "resource_group_name" {
  description = "The environment's resource group (cloud architecture: {env}-zionet-learning-2025)."
  value       = "${local.env}-zionet-learning-2025"
}

output "aks_name" {
  description = "AKS cluster name (aks-cluster-{env})."
  value       = "aks-cluster-${local.env}"
}

output "aks_egress_ip_name" {
  description = "The cluster's static outbound public IP, allowed through the PostgreSQL firewall."
  value       = "aks-egress-${local.env}"
}

output "postgres_server_name" {
  description = "PostgreSQL Flexible Server name ({env}-pg-zionet-learning)."
  value       = "${local.env}-pg-zionet-learning"
}

output "servicebus_namespace_name" {
  description = "Service Bus namespace ({env}-servicebus-zionet-learning)."
  value       = "${local.env}-servicebus-zionet-learning"
}

output "signalr_name" {
  description = "Azure SignalR Service name (globally unique, so suffixed with the environment)."
  value       = "signalr-teachin-${local.env}"
}

output "key_vault_name" {
  description = "Key Vault name: the historical names for dev and prod, else {env}-teachin-kv within 24 characters."
  value       = lookup(local.key_vault_names, local.env, "${substr(local.env, 0, 13)}-teachin-kv")
}

output "storage_account_name" {
  description = "Storage account for avatars: lowercase alphanumerics, at most 24 characters."
  value       = substr("stteachin${local.env_alnum}", 0, 24)
}

output "log_analytics_name" {
  description = "Log Analytics workspace name."
  value       = "log-teachin-${local.env}"
}

output "app_insights_prefix" {
  description = "Prefix of the Application Insights components (one per app)."
  value       = "appi-teachin-${local.env}"
}

output "static_web_app_prefix" {
  description = "Prefix of the portals' Static Web Apps."
  value       = "swa-teachin-${local.env}"
}

output "redis_cache_name" {
  description = "Azure Cache for Redis name, used only if that module is re-enabled."
  value       = "${local.env}-redis-zionet-learning"
}

output "cluster_secret_store_name" {
  description = "The environment's ClusterSecretStore (values.<env>.yaml externalSecrets.secretStoreRef.name)."
  value       = "keyvault-${local.env}"
}

output "eso_identity_name" {
  description = "User-assigned identity External Secrets uses to read this environment's Key Vault."
  value       = "id-eso-teachin-${local.env}"
}

output "namespace" {
  description = "The Kubernetes namespace of the environment."
  value       = local.env
}
