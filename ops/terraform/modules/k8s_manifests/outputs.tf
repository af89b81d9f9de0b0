output "namespace" {
  description = "The environment's namespace (created)."
  value       = kubernetes_namespace_v1.env.metadata[0].name
}
