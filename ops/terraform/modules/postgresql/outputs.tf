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
  value       = local.database.name
}

output "admin_password" {
  description = "Administrator password of a server this environment owns (empty when sharing): kept in its Key Vault and in the cluster's db-admin namespace, for the role Job only."
  value       = local.admin_password
  sensitive   = true
}

output "admin_login" {
  description = "Administrator login, for the postgresql provider only (never in an application connection string)."
  value       = local.admin_login
}
