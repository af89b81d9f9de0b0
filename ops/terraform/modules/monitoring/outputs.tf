output "connection_strings" {
  description = "Application Insights connection string per app."
  value       = { for k, v in azurerm_application_insights.this : k => v.connection_string }
  sensitive   = true
}
