# How Kubernetes gets the environment's secrets: a managed identity that may only read this
# environment's Key Vault, federated (workload identity) with a service account in the
# environment's namespace, and a ClusterSecretStore (External Secrets Operator) using it.
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

resource "kubernetes_service_account_v1" "reader" {
  metadata {
    name      = var.service_account_name
    namespace = var.namespace
    annotations = {
      "azure.workload.identity/client-id" = azurerm_user_assigned_identity.eso.client_id
      "azure.workload.identity/tenant-id" = var.tenant_id
    }
  }
  automount_service_account_token = false
}

resource "kubernetes_manifest" "store" {
  manifest = yamldecode(templatefile("${path.module}/clustersecretstore.yaml.tftpl", {
    name            = var.name
    environment     = var.namespace
    namespace       = var.namespace
    vault_url       = var.key_vault_uri
    tenant_id       = var.tenant_id
    service_account = kubernetes_service_account_v1.reader.metadata[0].name
  }))

  depends_on = [azurerm_role_assignment.eso_reads_secrets, azurerm_federated_identity_credential.eso]
}
