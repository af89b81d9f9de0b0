variable "environment_name" {
  description = "The environment (dev, prod, or a dynamic one such as feature-x) whose resource names are derived."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.environment_name))
    error_message = "environment_name must be 3-20 characters: lowercase letters, digits and '-', starting with a letter and not ending with '-'."
  }
}
