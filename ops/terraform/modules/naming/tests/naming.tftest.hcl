# Offline tests of the naming rules (no provider): `terraform test` in this module.

run "dev_keeps_the_architecture_names" {
  command = plan

  variables {
    environment_name = "dev"
  }

  assert {
    condition     = output.resource_group_name == "dev-zionet-learning-2025"
    error_message = "dev's resource group must be dev-zionet-learning-2025"
  }
  assert {
    condition     = output.aks_name == "aks-cluster-dev" && output.postgres_server_name == "dev-pg-zionet-learning"
    error_message = "dev's cluster and server names must match the cloud architecture"
  }
  assert {
    condition     = output.key_vault_name == "teachin-seo-kv"
    error_message = "dev's Key Vault is teachin-seo-kv"
  }
}

run "prod_key_vault" {
  command = plan

  variables {
    environment_name = "prod"
  }

  assert {
    condition     = output.key_vault_name == "prod-teachin-seo-kv"
    error_message = "prod's Key Vault is prod-teachin-seo-kv"
  }
}

run "long_dynamic_names_fit_azure_limits" {
  command = plan

  variables {
    environment_name = "feature-abcdefghijkl"
  }

  assert {
    condition     = length(output.key_vault_name) <= 24 && can(regex("^[a-zA-Z][a-zA-Z0-9-]+[a-zA-Z0-9]$", output.key_vault_name))
    error_message = "Key Vault names are 3-24 alphanumerics and dashes"
  }
  assert {
    condition     = length(output.storage_account_name) <= 24 && can(regex("^[a-z0-9]+$", output.storage_account_name))
    error_message = "storage account names are at most 24 lowercase alphanumerics"
  }
  assert {
    condition     = output.cluster_secret_store_name == "keyvault-feature-abcdefghijkl"
    error_message = "the ClusterSecretStore is keyvault-<env>"
  }
}

run "rejects_bad_environment_names" {
  command = plan

  variables {
    environment_name = "Feature_X"
  }

  expect_failures = [var.environment_name]
}
