# Everything the binary reads from Key Vault, written to this environment's vault. Names are
# the chart's externalSecrets remoteKey values (ops/check compares the two lists); values are
# connection strings of the resources above, keys generated here once (and kept in state), or
# API keys from TF_VAR_* secrets.

resource "random_password" "lookup_hash_key" {
  length  = 48
  special = false
}

resource "random_password" "jwt_secret" {
  length  = 64
  special = false
}

resource "random_password" "jwt_refresh_token_hash_key" {
  length  = 64
  special = false
}

locals {
  key_vault_secrets = merge(
    {
      "postgres-connection-string"             = module.database_role.connection_url
      "servicebus-connection-string"           = module.servicebus.connection_string
      "servicebus-keda-connection-string"      = module.servicebus.keda_connection_string
      "servicebus-stats-connection-string"     = module.servicebus.stats_connection_string
      "avatars-storage-connection-string"      = module.storage.connection_string
      "teachin-lookup-hash-key"                = random_password.lookup_hash_key.result
      "jwt-secret"                             = random_password.jwt_secret.result
      "jwt-refresh-token-hash-key"             = random_password.jwt_refresh_token_hash_key.result
      "azure-openai-api-key"                   = var.azure_openai_api_key
      "tavily-api-key"                         = var.tavily_api_key
      "speech-key"                             = var.speech_key
      "brevo-smtp-user"                        = var.brevo_smtp_user
      "brevo-smtp-password"                    = var.brevo_smtp_password
      "app-insights-backend-connection-string" = module.monitoring.connection_strings["backend"]
    },
    # The owner of a server keeps its admin password where sharing environments read it.
    var.use_shared_postgres ? {} : {
      "postgres-admin-password" = module.postgresql.admin_password
    },
    var.enable_azure_signalr ? {
      "signalr-connection-string" = module.signalr[0].connection_string
    } : {},
    length(module.redis) > 0 ? {
      "redis-connection-string" = module.redis[0].connection_string
    } : {},
  )
}

module "keyvault" {
  source = "./modules/keyvault"

  protect = var.protect_stateful_resources

  name                     = module.naming.key_vault_name
  location                 = var.location
  resource_group_name      = azurerm_resource_group.env.name
  purge_protection_enabled = var.key_vault_purge_protection
  secrets                  = local.key_vault_secrets
  tags                     = local.tags
}
