# The three portals (student, teacher, admin) as Azure Static Web Apps: global CDN, HTTPS and
# deployment tokens for their own CI.

resource "azurerm_static_web_app" "this" {
  for_each = toset(var.apps)

  name                = "${var.name_prefix}-${each.key}"
  location            = var.location
  resource_group_name = var.resource_group_name
  sku_tier            = var.sku
  sku_size            = var.sku
  tags                = var.tags
}
