output "id" {
  description = "Key Vault resource id."
  value       = local.vault.id
}

output "vault_uri" {
  description = "Key Vault URI, for the ClusterSecretStore."
  value       = local.vault.vault_uri
}

output "tenant_id" {
  description = "Tenant the vault authenticates against."
  value       = local.vault.tenant_id
}

output "secret_names" {
  description = "Names of the secrets written."
  value       = sort(nonsensitive(keys(var.secrets)))
}
