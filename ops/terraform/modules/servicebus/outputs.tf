output "namespace_name" {
  description = "Service Bus namespace name."
  value       = local.namespace.name
}

output "queue_names" {
  description = "The queues created."
  value       = sort(keys(azurerm_servicebus_queue.this))
}

output "connection_string" {
  description = "Send/listen connection string for the roles (ServiceBus__ConnectionString)."
  value       = azurerm_servicebus_namespace_authorization_rule.app.primary_connection_string
  sensitive   = true
}

output "keda_connection_string" {
  description = "Manage connection string for KEDA's azure-servicebus scaler."
  value       = azurerm_servicebus_namespace_authorization_rule.keda.primary_connection_string
  sensitive   = true
}

output "stats_connection_string" {
  description = "Manage connection string for reading queue statistics (ServiceBus__StatsConnectionString)."
  value       = azurerm_servicebus_namespace_authorization_rule.stats.primary_connection_string
  sensitive   = true
}
