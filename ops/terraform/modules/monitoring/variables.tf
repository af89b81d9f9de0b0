variable "name_prefix" {
  description = "Prefix of the components' names."
  type        = string
}

variable "location" {
  description = "Region of the components."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the components."
  type        = string
}

variable "log_analytics_workspace_id" {
  description = "Workspace the components store their data in."
  type        = string
}

variable "frontend_apps" {
  description = "The portals that get a component each."
  type        = list(string)
}

variable "retention_in_days" {
  description = "Days telemetry is kept."
  type        = number
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
