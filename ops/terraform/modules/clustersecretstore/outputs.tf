output "identity_client_id" {
  description = "Client id of the reader identity: the chart's externalSecrets.store.identityClientId (the deploy workflow reads it with az identity show)."
  value       = azurerm_user_assigned_identity.eso.client_id
}
