# One Log Analytics workspace per environment: Container Insights from AKS and the
# workspace-based Application Insights components write here.

resource "azurerm_log_analytics_workspace" "this" {
  name                = var.name
  location            = var.location
  resource_group_name = var.resource_group_name
  sku                 = "PerGB2018"
  retention_in_days   = var.retention_in_days
  # A cap so a log storm in a test environment cannot run up the bill.
  daily_quota_gb = var.daily_quota_gb
  tags           = var.tags
}
