# Application Insights: one component for the backend and one per portal (cloud architecture:
# "Deployed For each Static Web App"), all workspace-based on the environment's workspace.

resource "azurerm_application_insights" "this" {
  for_each = toset(concat(["backend"], var.frontend_apps))

  name                = "${var.name_prefix}-${each.key}"
  location            = var.location
  resource_group_name = var.resource_group_name
  workspace_id        = var.log_analytics_workspace_id
  application_type    = "web"
  retention_in_days   = var.retention_in_days
  tags                = var.tags
}
