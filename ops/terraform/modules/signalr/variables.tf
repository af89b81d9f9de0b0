variable "name" {
  description = "SignalR Service name (globally unique)."
  type        = string
}

variable "location" {
  description = "Region of the service."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the service."
  type        = string
}

variable "sku_name" {
  description = "Free_F1 (dev, 20 connections) or Standard_S1."
  type        = string

  validation {
    condition     = contains(["Free_F1", "Standard_S1", "Premium_P1"], var.sku_name)
    error_message = "sku_name must be Free_F1, Standard_S1 or Premium_P1."
  }
}

variable "capacity" {
  description = "Units (1 for Free_F1)."
  type        = number
}

variable "allowed_origins" {
  description = "Portal origins allowed by CORS."
  type        = list(string)
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
