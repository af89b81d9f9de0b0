output "account_name" {
  description = "Storage account name."
  value       = local.account.name
}

output "blob_endpoint" {
  description = "Blob service endpoint."
  value       = local.account.primary_blob_endpoint
}

output "connection_string" {
  description = "Connection string for the roles (ConnectionStrings__AvatarsStorage): signs SAS URLs."
  value       = local.account.primary_connection_string
  sensitive   = true
}
