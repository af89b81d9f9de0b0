# The environment's own PostgreSQL role: what the application (every role of the image, the
# migration Job and the cron jobs) connects as, instead of the server's admin login.
# - It logs in to its own database only: CONNECT is revoked from PUBLIC there, so other
#   environments' roles on the shared server cannot connect to it, nor this one to theirs.
# - It may create objects in its database's public schema (the migrations create and own the
#   tables), nothing else on the server: NOCREATEROLE, NOCREATEDB, no superuser.
# Made by a Job in the cluster's `db-admin` namespace (role.sql, as the server's admin, whose
# password only the server's owner puts there): the cluster's egress address is the one the
# server's firewall admits, so nothing has to reach the server from the machine running
# Terraform, and a dynamic environment never holds dev's admin password (not in its Key
# Vault, not in its namespace, not in its state).

resource "random_password" "app" {
  length  = 40
  special = false
}

locals {
  sql = file("${path.module}/role.sql")
  # A new Job (and a new run) whenever the script, the role or its password change.
  run = substr(sha256(join("/", [local.sql, var.role_name, var.database_name, tostring(var.connection_limit), random_password.app.result])), 0, 10)
}

resource "kubernetes_secret_v1" "role" {
  metadata {
    name      = "role-${var.database_name}"
    namespace = var.admin_namespace
  }
  data = {
    ROLE_PASSWORD = random_password.app.result
  }
}

resource "kubernetes_config_map_v1" "sql" {
  metadata {
    name      = "role-${var.database_name}-sql"
    namespace = var.admin_namespace
  }
  data = {
    "role.sql" = local.sql
  }
}

resource "kubernetes_job_v1" "role" {
  metadata {
    name      = "role-${var.database_name}-${local.run}"
    namespace = var.admin_namespace
  }

  spec {
    backoff_limit              = 4
    ttl_seconds_after_finished = 86400

    template {
      metadata {}
      spec {
        restart_policy                  = "Never"
        automount_service_account_token = false

        security_context {
          run_as_non_root = true
          run_as_user     = 70
          run_as_group    = 70
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name              = "psql"
          image             = var.psql_image
          image_pull_policy = "Always"
          command           = ["psql", "-X", "-v", "role=${var.role_name}", "-v", "db=${var.database_name}", "-v", "conn_limit=${var.connection_limit}", "-f", "/sql/role.sql"]

          env {
            name  = "PGHOST"
            value = var.host
          }
          env {
            name  = "PGDATABASE"
            value = "postgres"
          }
          env {
            name  = "PGSSLMODE"
            value = "require"
          }
          env {
            name = "PGUSER"
            value_from {
              secret_key_ref {
                name = var.admin_secret_name
                key  = "username"
              }
            }
          }
          env {
            name = "PGPASSWORD"
            value_from {
              secret_key_ref {
                name = var.admin_secret_name
                key  = "password"
              }
            }
          }
          env {
            name = "ROLE_PASSWORD"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.role.metadata[0].name
                key  = "ROLE_PASSWORD"
              }
            }
          }

          resources {
            requests = {
              cpu    = "10m"
              memory = "32Mi"
            }
            limits = {
              cpu    = "200m"
              memory = "64Mi"
            }
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "sql"
            mount_path = "/sql"
            read_only  = true
          }
        }

        volume {
          name = "sql"
          config_map {
            name = kubernetes_config_map_v1.sql.metadata[0].name
          }
        }
      }
    }
  }

  wait_for_completion = true

  timeouts {
    create = "10m"
    update = "10m"
  }
}
