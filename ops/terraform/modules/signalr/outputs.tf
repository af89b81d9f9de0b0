output "hostname" {
  description = "The service's host name."
  value       = azurerm_signalr_service.this.hostname
}

output "connection_string" {
  description = "Connection string for the manager (Azure__SignalR__ConnectionString)."
  value       = azurerm_signalr_service.this.primary_connection_string
  sensitive   = true
}
