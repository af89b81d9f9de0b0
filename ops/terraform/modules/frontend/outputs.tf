output "default_host_names" {
  description = "Host name of each portal."
  value       = { for k, v in azurerm_static_web_app.this : k => v.default_host_name }
}

output "api_keys" {
  description = "Deployment token of each portal, for its CI."
  value       = { for k, v in azurerm_static_web_app.this : k => v.api_key }
  sensitive   = true
}
