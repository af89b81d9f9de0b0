variable "create_server" {
  description = "Create the server (true: dev, prod) or use an existing one through a data source (false: dynamic environments)."
  type        = bool
}

variable "server_name" {
  description = "Server name: created with this name, or the shared server to read."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the server (the shared environment's when create_server is false)."
  type        = string
}

variable "location" {
  description = "Region of the server (Israel Central for data residency)."
  type        = string
}

variable "postgres_version" {
  description = "PostgreSQL major version."
  type        = string

  validation {
    condition     = contains(["15", "16", "17"], var.postgres_version)
    error_message = "postgres_version must be 15, 16 or 17."
  }
}

variable "sku_name" {
  description = "Compute SKU, e.g. B_Standard_B1ms (dev) or GP_Standard_D2ds_v5 (prod)."
  type        = string
}

variable "storage_mb" {
  description = "Initial storage in MB (auto-grows)."
  type        = number
}

variable "admin_login" {
  description = "Administrator login of a created server."
  type        = string
}


variable "backup_retention_days" {
  description = "Point-in-time restore window in days."
  type        = number
}

variable "geo_redundant_backup" {
  description = "Keep backups in the paired region (prod)."
  type        = bool
}

variable "high_availability" {
  description = "Zone-redundant standby (prod)."
  type        = bool
}

variable "allowed_ip_addresses" {
  description = "Addresses allowed through the firewall: the AKS egress IP(s)."
  type        = list(string)
}

variable "database_name" {
  description = "This environment's database on the server."
  type        = string
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}

variable "protect" {
  description = "Create the stateful resource with lifecycle.prevent_destroy (dev, prod); false for dynamic environments, which are destroyed."
  type        = bool
}

