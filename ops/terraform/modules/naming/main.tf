# Resource names in one place, from the environment's name alone. Pure logic (no provider),
# so `terraform test` checks it offline; the root uses it twice: for this environment, and for
# the environment whose resources a dynamic environment shares (dev).

locals {
  env = var.environment_name
  # Storage accounts: 3-24 lowercase letters and digits, globally unique.
  env_alnum = replace(local.env, "-", "")
  # dev and prod keep the Key Vault names they were created with (cloud architecture); other
  # environments get one derived from their name, within Key Vault's 24 characters.
  key_vault_names = {
    dev  = "teachin-seo-kv"
    prod = "prod-teachin-seo-kv"
  }
}
