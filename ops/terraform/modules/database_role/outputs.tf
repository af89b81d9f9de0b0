output "role_name" {
  description = "The environment's login role (created by the Job, which Terraform waits for)."
  value       = var.role_name
}

output "connection_url" {
  description = "postgres:// URL of the environment's database as its own role, TLS required (ConnectionStrings__Postgres; KEDA's postgresql scaler reads the same)."
  value       = "postgres://${var.role_name}:${urlencode(random_password.app.result)}@${var.host}:5432/${var.database_name}?sslmode=require"
  sensitive   = true
  depends_on  = [kubernetes_job_v1.role]
}
