variable "name" {
  description = "Registry name (globally unique, letters and digits): <name>.azurecr.io."
  type        = string
}

variable "location" {
  description = "Region of the registry."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the registry (the owning environment's)."
  type        = string
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
