variable "role_name" {
  description = "The environment's login role (<env>_app)."
  type        = string
}

variable "database_name" {
  description = "The environment's database, the only one the role may connect to."
  type        = string
}

variable "host" {
  description = "Server host name."
  type        = string
}

variable "connection_limit" {
  description = "Most connections the role may hold (every replica's pool, the jobs and KEDA's scaler)."
  type        = number
}

variable "admin_namespace" {
  description = "Namespace of the cluster where the server's admin credentials are and the role Job runs (db-admin)."
  type        = string
}

variable "admin_secret_name" {
  description = "Secret (username, password) of the server's admin in admin_namespace, written by the server's owner."
  type        = string
}

variable "psql_image" {
  description = "Image with psql 15 or later (\\getenv); public, pulled without credentials."
  type        = string
}
