variable "name" {
  description = "Cluster name (aks-cluster-{env})."
  type        = string
}

variable "location" {
  description = "Azure region of the cluster."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group the cluster and its egress IP live in."
  type        = string
}

variable "egress_ip_name" {
  description = "Name of the static outbound public IP."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes minor version (AKS picks the latest patch; the upgrade channel keeps it patched)."
  type        = string
}

variable "sku_tier" {
  description = "AKS control plane tier: Free (dev) or Standard (uptime SLA, prod)."
  type        = string

  validation {
    condition     = contains(["Free", "Standard"], var.sku_tier)
    error_message = "sku_tier must be Free or Standard."
  }
}

variable "zones" {
  description = "Availability zones for the node pools and the egress IP."
  type        = list(string)
}

variable "system_node_vm_size" {
  description = "VM size of the system (add-ons only) pool."
  type        = string
}

variable "system_node_min_count" {
  description = "Minimum nodes in the system pool."
  type        = number
}

variable "system_node_max_count" {
  description = "Maximum nodes in the system pool."
  type        = number
}

variable "user_node_vm_size" {
  description = "VM size of the workload pool."
  type        = string
}

variable "user_node_min_count" {
  description = "Minimum nodes in the workload pool."
  type        = number
}

variable "user_node_max_count" {
  description = "Maximum nodes in the workload pool."
  type        = number

  validation {
    condition     = var.user_node_max_count >= 1
    error_message = "user_node_max_count must be at least 1."
  }
}

variable "enable_spot_nodes" {
  description = "Run the workload pool on spot VMs (non-prod cost saving)."
  type        = bool
}

variable "api_server_authorized_ip_ranges" {
  description = "CIDRs allowed to reach the API server; empty leaves it open (protected by RBAC)."
  type        = list(string)
}

variable "log_analytics_workspace_id" {
  description = "Workspace that receives Container Insights."
  type        = string
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
}

variable "system_pool_critical_only" {
  description = "Taint the system pool CriticalAddonsOnly (only where an untainted user pool takes everything else)."
  type        = bool
}
