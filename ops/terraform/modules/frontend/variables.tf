variable "name_prefix" {
  description = "Prefix of the apps' names."
  type        = string
}

variable "location" {
  description = "Region of the apps' management plane (content is served globally)."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the apps."
  type        = string
}

variable "apps" {
  description = "The portals to create."
  type        = list(string)
}

variable "sku" {
  description = "Free or Standard."
  type        = string

  validation {
    condition     = contains(["Free", "Standard"], var.sku)
    error_message = "sku must be Free or Standard."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
