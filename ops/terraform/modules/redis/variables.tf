variable "name" {
  description = "Cache name ({env}-redis-zionet-learning)."
  type        = string
}

variable "location" {
  description = "Region of the cache."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the cache."
  type        = string
}

variable "sku_name" {
  description = "Basic, Standard or Premium."
  type        = string

  validation {
    condition     = contains(["Basic", "Standard", "Premium"], var.sku_name)
    error_message = "sku_name must be Basic, Standard or Premium."
  }
}

variable "family" {
  description = "C (Basic/Standard) or P (Premium)."
  type        = string
}

variable "capacity" {
  description = "Cache size within the family (0-6)."
  type        = number
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
