variable "name" {
  description = "Workspace name."
  type        = string
}

variable "location" {
  description = "Region of the workspace."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the workspace."
  type        = string
}

variable "retention_in_days" {
  description = "Days logs are kept (30-730)."
  type        = number

  validation {
    condition     = var.retention_in_days >= 30 && var.retention_in_days <= 730
    error_message = "retention_in_days must be between 30 and 730."
  }
}

variable "daily_quota_gb" {
  description = "Daily ingestion cap in GB; -1 for none."
  type        = number
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}
