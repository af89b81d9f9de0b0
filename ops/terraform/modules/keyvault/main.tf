# The environment's Key Vault and every secret the binary reads, written by Terraform from the
# resources it creates (connection strings), generated keys, and API keys passed in as
# sensitive variables. RBAC authorization: Terraform writes with "Secrets Officer", External
# Secrets reads with "Secrets User" (granted by the clustersecretstore module).

data "azurerm_client_config" "current" {}

# Two blocks of one resource: prevent_destroy must be a literal, so dev and prod (protect =
# true) get the protected one and dynamic environments, destroyed when their pull request
# closes, the other. ops/check verifies which one each environment instantiates.
resource "azurerm_key_vault" "protected" {
  count = var.protect ? 1 : 0

  name                          = var.name
  location                      = var.location
  resource_group_name           = var.resource_group_name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  enable_rbac_authorization     = true
  purge_protection_enabled      = var.purge_protection_enabled
  soft_delete_retention_days    = 90
  public_network_access_enabled = true

  network_acls {
    default_action = "Allow"
    bypass         = "AzureServices"
  }

  tags = var.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "azurerm_key_vault" "disposable" {
  count = var.protect ? 0 : 1

  name                          = var.name
  location                      = var.location
  resource_group_name           = var.resource_group_name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  enable_rbac_authorization     = true
  purge_protection_enabled      = var.purge_protection_enabled
  soft_delete_retention_days    = 90
  public_network_access_enabled = true

  network_acls {
    default_action = "Allow"
    bypass         = "AzureServices"
  }

  tags = var.tags
}

locals {
  vault = var.protect ? azurerm_key_vault.protected[0] : azurerm_key_vault.disposable[0]
}

resource "azurerm_role_assignment" "deployer" {
  scope                = local.vault.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_key_vault_secret" "this" {
  # Secret names are not secret; their values are.
  for_each = nonsensitive(toset(keys(var.secrets)))

  name         = each.key
  value        = var.secrets[each.key]
  key_vault_id = local.vault.id
  content_type = "text/plain"

  depends_on = [azurerm_role_assignment.deployer]
}
