output "name" {
  description = "The ClusterSecretStore's name."
  value       = var.name
}

output "identity_client_id" {
  description = "Client id of the reader identity."
  value       = azurerm_user_assigned_identity.eso.client_id
}
