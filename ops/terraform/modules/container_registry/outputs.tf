output "id" {
  description = "Registry resource id (scope of the AcrPull role assignments)."
  value       = azurerm_container_registry.this.id
}

output "login_server" {
  description = "<name>.azurecr.io, the host of the chart's image.repository."
  value       = azurerm_container_registry.this.login_server
}
