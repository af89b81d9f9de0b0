variable "name" {
  description = "Namespace name ({env}-servicebus-zionet-learning)."
  type        = string
}

variable "location" {
  description = "Region of the namespace."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group of the namespace."
  type        = string
}

variable "sku" {
  description = "Standard (sessions, dead-lettering) or Premium (isolation, zone redundancy)."
  type        = string

  validation {
    condition     = contains(["Standard", "Premium"], var.sku)
    error_message = "sku must be Standard or Premium: Basic has no duplicate detection, which the outbox relay relies on."
  }
}

variable "premium_messaging_units" {
  description = "Messaging units when sku is Premium."
  type        = number
}

variable "max_delivery_count" {
  description = "Deliveries before a message is dead-lettered."
  type        = number

  validation {
    condition     = var.max_delivery_count >= 1 && var.max_delivery_count <= 2000
    error_message = "max_delivery_count must be between 1 and 2000."
  }
}

variable "lock_duration" {
  description = "Peek-lock duration (ISO 8601); workers renew it for long AI calls."
  type        = string
}

variable "duplicate_detection_history_window" {
  description = "How long (ISO 8601) the broker remembers a message id and drops a resend of it."
  type        = string

  validation {
    condition     = can(regex("^P(T[0-9]+[HMS]|[1-7]D)$", var.duplicate_detection_history_window))
    error_message = "duplicate_detection_history_window must be an ISO 8601 duration such as PT10M, PT1H or P1D (Service Bus allows 20 seconds to 7 days)."
  }
}

variable "message_ttl" {
  description = "Default time to live (ISO 8601) before a message expires to the dead-letter queue."
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
