output "namespace" {
  description = "The environment's namespace (created)."
  value       = kubernetes_namespace_v1.env.metadata[0].name
}

output "db_admin_namespace" {
  description = "Namespace of the database admin Secret and the role Jobs (made by the cluster's owner)."
  value       = var.manage_shared_namespaces ? kubernetes_namespace_v1.db_admin[0].metadata[0].name : "db-admin"
}
