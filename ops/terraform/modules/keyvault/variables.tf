variable "name" {
  description = "Key Vault name (3-24 alphanumerics and dashes, globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$", var.name))
    error_message = "Key Vault names are 3-24 letters, digits and dashes, starting with a letter."
  }
}

variable "location" {
  description = "Region of the vault."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the vault."
  type        = string
}

variable "purge_protection_enabled" {
  description = "Forbid purging deleted secrets before retention ends (prod); off for throwaway environments."
  type        = bool
}

variable "secrets" {
  description = "Secret name -> value. Names must match the chart's externalSecrets remoteKey values."
  type        = map(string)
  sensitive   = true
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}

variable "protect" {
  description = "Create the stateful resource with lifecycle.prevent_destroy (dev, prod); false for dynamic environments, which are destroyed."
  type        = bool
}
