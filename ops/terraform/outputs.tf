output "resource_group_name" {
  description = "The environment's resource group."
  value       = azurerm_resource_group.env.name
}

output "aks_cluster_name" {
  description = "The cluster the environment runs on (its own or the shared one)."
  value       = var.use_shared_aks ? module.naming_shared.aks_name : module.naming.aks_name
}

output "aks_resource_group_name" {
  description = "Resource group of that cluster, for `az aks get-credentials`."
  value       = var.use_shared_aks ? module.naming_shared.resource_group_name : azurerm_resource_group.env.name
}

output "namespace" {
  description = "The environment's Kubernetes namespace."
  value       = module.k8s_manifests.namespace
}

output "postgres_fqdn" {
  description = "Host of the PostgreSQL server holding this environment's database."
  value       = module.postgresql.fqdn
}

output "postgres_database" {
  description = "This environment's database."
  value       = module.postgresql.database_name
}

output "servicebus_namespace" {
  description = "The environment's Service Bus namespace."
  value       = module.servicebus.namespace_name
}

output "servicebus_queues" {
  description = "Queues in that namespace."
  value       = module.servicebus.queue_names
}

output "signalr_hostname" {
  description = "Azure SignalR host (empty where the manager serves its own hub)."
  value       = var.enable_azure_signalr ? module.signalr[0].hostname : ""
}

output "storage_account_name" {
  description = "Avatars storage account."
  value       = module.storage.account_name
}

output "key_vault_uri" {
  description = "The environment's Key Vault."
  value       = module.keyvault.vault_uri
}

output "key_vault_secret_names" {
  description = "Secrets written to the vault (the chart's remoteKey values)."
  value       = module.keyvault.secret_names
}

output "cluster_secret_store" {
  description = "ClusterSecretStore name for the chart's externalSecrets.secretStoreRef.name (the chart creates it)."
  value       = module.naming.cluster_secret_store_name
}

output "eso_identity_client_id" {
  description = "The chart's externalSecrets.store.identityClientId."
  value       = module.clustersecretstore.identity_client_id
}

output "frontend_hosts" {
  description = "Host name of each portal."
  value       = module.frontend.default_host_names
}

output "container_registry_login_server" {
  description = "Registry the image is pushed to and pulled from."
  value       = "${var.container_registry_name}.azurecr.io"
}
