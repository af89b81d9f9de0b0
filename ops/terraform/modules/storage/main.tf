# Blob storage for avatars. Browsers upload straight to Blob with a short-lived SAS URL the
# API signs (original-system.md §1.2), so the account key exists (shared key), CORS admits
# the portals, and the container itself stays private.

# Two blocks of one resource: prevent_destroy must be a literal, so dev and prod (protect =
# true) get the protected one and dynamic environments, destroyed when their pull request
# closes, the other. ops/check verifies which one each environment instantiates.
resource "azurerm_storage_account" "protected" {
  count = var.protect ? 1 : 0

  name                     = var.name
  resource_group_name      = var.resource_group_name
  location                 = var.location
  account_tier             = "Standard"
  account_kind             = "StorageV2"
  account_replication_type = var.replication_type

  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = true
  infrastructure_encryption_enabled = true
  public_network_access_enabled     = true

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = var.soft_delete_days
    }

    container_delete_retention_policy {
      days = var.soft_delete_days
    }

    cors_rule {
      allowed_headers    = ["*"]
      allowed_methods    = ["GET", "HEAD", "PUT"]
      allowed_origins    = var.allowed_origins
      exposed_headers    = ["ETag"]
      max_age_in_seconds = 3600
    }
  }

  # SAS URLs are signed for minutes; anything longer-lived is logged.
  sas_policy {
    expiration_period = "0.01:00:00"
    expiration_action = "Log"
  }

  tags = var.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "azurerm_storage_account" "disposable" {
  count = var.protect ? 0 : 1

  name                     = var.name
  resource_group_name      = var.resource_group_name
  location                 = var.location
  account_tier             = "Standard"
  account_kind             = "StorageV2"
  account_replication_type = var.replication_type

  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = true
  infrastructure_encryption_enabled = true
  public_network_access_enabled     = true

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = var.soft_delete_days
    }

    container_delete_retention_policy {
      days = var.soft_delete_days
    }

    cors_rule {
      allowed_headers    = ["*"]
      allowed_methods    = ["GET", "HEAD", "PUT"]
      allowed_origins    = var.allowed_origins
      exposed_headers    = ["ETag"]
      max_age_in_seconds = 3600
    }
  }

  # SAS URLs are signed for minutes; anything longer-lived is logged.
  sas_policy {
    expiration_period = "0.01:00:00"
    expiration_action = "Log"
  }

  tags = var.tags
}

locals {
  account = var.protect ? azurerm_storage_account.protected[0] : azurerm_storage_account.disposable[0]
}

resource "azurerm_storage_container" "avatars" {
  name                  = var.container_name
  storage_account_id    = local.account.id
  container_access_type = "private"
}

# Versioning keeps a previous version of a blob at every overwrite and delete, so a deleted
# avatar (replaced, swept by `teachin cron purge-uploads`, or its owner erased) would live on
# as a version for ever. The rule deletes previous versions once they are as old as the
# soft-delete window: what the application deletes is recoverable for that long, then gone.
resource "azurerm_storage_management_policy" "old_versions" {
  storage_account_id = local.account.id

  rule {
    name    = "delete-previous-versions"
    enabled = true

    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${var.container_name}/"]
    }

    actions {
      version {
        delete_after_days_since_creation = var.soft_delete_days
      }
    }
  }
}
