output "id" {
  description = "Key Vault resource id."
  value       = azurerm_key_vault.this.id
}

output "vault_uri" {
  description = "Key Vault URI, for the ClusterSecretStore."
  value       = azurerm_key_vault.this.vault_uri
}

output "tenant_id" {
  description = "Tenant the vault authenticates against."
  value       = azurerm_key_vault.this.tenant_id
}

output "secret_names" {
  description = "Names of the secrets written."
  value       = sort(nonsensitive(keys(var.secrets)))
}
