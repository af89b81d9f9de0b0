output "account_name" {
  description = "Storage account name."
  value       = azurerm_storage_account.this.name
}

output "blob_endpoint" {
  description = "Blob service endpoint."
  value       = azurerm_storage_account.this.primary_blob_endpoint
}

output "connection_string" {
  description = "Connection string for the roles (ConnectionStrings__AvatarsStorage): signs SAS URLs."
  value       = azurerm_storage_account.this.primary_connection_string
  sensitive   = true
}
