variable "name" {
  description = "Storage account name (3-24 lowercase alphanumerics, globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.name))
    error_message = "Storage account names are 3-24 lowercase letters and digits."
  }
}

variable "location" {
  description = "Region of the account."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the account."
  type        = string
}

variable "replication_type" {
  description = "LRS (dev), ZRS or GZRS (prod)."
  type        = string

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "GZRS", "RAGRS", "RAGZRS"], var.replication_type)
    error_message = "replication_type must be one of LRS, ZRS, GRS, GZRS, RAGRS, RAGZRS."
  }
}

variable "container_name" {
  description = "The avatars container (Avatars__Container in the chart)."
  type        = string
}

variable "soft_delete_days" {
  description = "Days deleted blobs and containers can be restored, and previous blob versions are kept."
  type        = number
}

variable "allowed_origins" {
  description = "Portal origins allowed to upload and read by CORS."
  type        = list(string)
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}

variable "protect" {
  description = "Create the stateful resource with lifecycle.prevent_destroy (dev, prod); false for dynamic environments, which are destroyed."
  type        = bool
}
