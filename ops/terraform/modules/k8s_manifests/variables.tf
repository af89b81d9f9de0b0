variable "namespace" {
  description = "The environment's namespace."
  type        = string
}

variable "manage_shared_namespaces" {
  description = "Create the cluster-wide shared namespaces (redis): only the environment that owns the cluster."
  type        = bool
}

variable "default_limits" {
  description = "Default container limits in the namespace."
  type        = object({ cpu = string, memory = string })
}

variable "default_requests" {
  description = "Default container requests in the namespace."
  type        = object({ cpu = string, memory = string })
}
