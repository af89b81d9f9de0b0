# How Kubernetes gets the environment's secrets: a managed identity that may only read this
# environment's Key Vault, federated (workload identity) with a service account in the
# environment's namespace. The service account and the ClusterSecretStore using it are made by
# the Helm chart (templates/secretstore.yaml), not here: a ClusterSecretStore is a custom
# resource, and a `kubernetes_manifest` of it needs the External Secrets CRDs at *plan* time,
# before the cluster (or the operator) exists, so a fresh environment could never plan.
# One store per environment, so environments sharing dev's cluster never read each other's
# vault.

resource "azurerm_user_assigned_identity" "eso" {
  name                = var.identity_name
  location            = var.location
  resource_group_name = var.resource_group_name
  tags                = var.tags
}

resource "azurerm_role_assignment" "eso_reads_secrets" {
  scope                = var.key_vault_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.eso.principal_id
}

resource "azurerm_federated_identity_credential" "eso" {
  name                = "external-secrets-${var.namespace}"
  resource_group_name = var.resource_group_name
  parent_id           = azurerm_user_assigned_identity.eso.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = var.oidc_issuer_url
  subject             = "system:serviceaccount:${var.namespace}:${var.service_account_name}"
}
