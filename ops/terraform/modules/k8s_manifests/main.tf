# Kubernetes objects that belong to the environment rather than to a release: its namespace
# (labelled so the shared Redis's NetworkPolicy admits it), default container limits, and, on
# a cluster this environment owns, the shared `redis` namespace.

resource "kubernetes_namespace_v1" "env" {
  metadata {
    name = var.namespace
    labels = {
      "teachin.io/environment"  = var.namespace
      "teachin.io/redis-client" = "true"
    }
  }
}

resource "kubernetes_namespace_v1" "redis" {
  count = var.manage_shared_namespaces ? 1 : 0

  metadata {
    name = "redis"
    labels = {
      "teachin.io/shared" = "true"
    }
  }
}

# Where the PostgreSQL server's admin credentials live on the cluster that owns the server,
# and where each environment's role Job runs (modules/database_role). Nothing else runs
# there; dynamic environments only create their own Job and Secret in it.
resource "kubernetes_namespace_v1" "db_admin" {
  count = var.manage_shared_namespaces ? 1 : 0

  metadata {
    name = "db-admin"
    labels = {
      "teachin.io/shared" = "true"
    }
  }
}

# Defaults for any container that forgets its own requests and limits.
resource "kubernetes_limit_range_v1" "defaults" {
  metadata {
    name      = "defaults"
    namespace = kubernetes_namespace_v1.env.metadata[0].name
  }

  spec {
    limit {
      type = "Container"
      default = {
        cpu    = var.default_limits.cpu
        memory = var.default_limits.memory
      }
      default_request = {
        cpu    = var.default_requests.cpu
        memory = var.default_requests.memory
      }
    }
  }
}
