output "server_id" {
  description = "Id of the server the database lives on (created or shared)."
  value       = local.server_id
}

output "fqdn" {
  description = "Server host name."
  value       = local.fqdn
}

output "database_name" {
  description = "This environment's database."
  value       = azurerm_postgresql_flexible_server_database.env.name
}

output "admin_password" {
  description = "Administrator password (generated here or the shared one)."
  value       = local.admin_password
  sensitive   = true
}

output "connection_url" {
  description = "postgres:// URL of this environment's database, TLS required (ConnectionStrings__Postgres; KEDA's postgresql scaler reads the same)."
  value       = "postgres://${local.admin_login}:${urlencode(local.admin_password)}@${local.fqdn}:5432/${azurerm_postgresql_flexible_server_database.env.name}?sslmode=require"
  sensitive   = true
}
