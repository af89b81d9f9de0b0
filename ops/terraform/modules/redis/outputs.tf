output "connection_string" {
  description = "StackExchange.Redis-form connection string (ConnectionStrings__Redis; src/config.rs parses it)."
  value       = "${azurerm_redis_cache.this.hostname}:${azurerm_redis_cache.this.ssl_port},password=${azurerm_redis_cache.this.primary_access_key},ssl=True,abortConnect=False"
  sensitive   = true
}
