# Providers and state. The state lives in an Azure Storage backend whose coordinates the
# workflow passes at `terraform init -backend-config=...` (one state key per environment), so
# nothing account-specific is committed.

terraform {
  required_version = ">= 1.6.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.20"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.35"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  backend "azurerm" {}
}

provider "azurerm" {
  subscription_id = var.subscription_id

  features {
    key_vault {
      # Deleted vaults and secrets stay recoverable; never purge them as a side effect.
      purge_soft_delete_on_destroy    = false
      recover_soft_deleted_key_vaults = true
    }
    application_insights {
      # Azure adds "Failure Anomalies" smart-detection alert rules to every component, outside
      # Terraform's state; with prevent_deletion_if_contains_resources they would make
      # `terraform destroy` of a dynamic environment's resource group fail.
      disable_generated_rule = true
    }
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
  }
}

# The cluster this environment runs on: its own (module.aks) or dev's (data source).
provider "kubernetes" {
  host                   = local.aks.host
  client_certificate     = base64decode(local.aks.client_certificate)
  client_key             = base64decode(local.aks.client_key)
  cluster_ca_certificate = base64decode(local.aks.cluster_ca_certificate)
}

