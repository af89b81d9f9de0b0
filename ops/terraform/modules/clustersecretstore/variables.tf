variable "identity_name" {
  description = "Name of the managed identity External Secrets uses for this environment."
  type        = string
}

variable "location" {
  description = "Region of the identity."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the identity."
  type        = string
}

variable "key_vault_id" {
  description = "The vault the identity may read."
  type        = string
}



variable "oidc_issuer_url" {
  description = "The cluster's OIDC issuer (federation)."
  type        = string
}

variable "namespace" {
  description = "The environment's namespace, home of the reader service account."
  type        = string
}

variable "service_account_name" {
  description = "Service account External Secrets impersonates."
  type        = string
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
