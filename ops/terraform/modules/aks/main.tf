# The environment's own AKS cluster (dev and prod; dynamic environments use dev's through
# data sources in the root). A static egress IP makes the cluster's outbound address known,
# so the PostgreSQL firewall can allow exactly it. Workloads go to an autoscaling user pool,
# on spot VMs (tainted) outside prod. Where that pool is spot, the system pool is left
# untainted (system_pool_critical_only = false) so the platform charts and Redis, which
# tolerate nothing, have somewhere to run; in prod it runs only cluster add-ons.

resource "azurerm_public_ip" "egress" {
  name                = var.egress_ip_name
  location            = var.location
  resource_group_name = var.resource_group_name
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = var.zones
  tags                = var.tags
}

resource "azurerm_kubernetes_cluster" "this" {
  name                = var.name
  location            = var.location
  resource_group_name = var.resource_group_name
  dns_prefix          = var.name
  kubernetes_version  = var.kubernetes_version
  sku_tier            = var.sku_tier

  automatic_upgrade_channel = "patch"
  node_os_upgrade_channel   = "NodeImage"

  # External Secrets authenticates to Key Vault with workload identity (OIDC federation).
  oidc_issuer_enabled       = true
  workload_identity_enabled = true
  azure_policy_enabled      = true

  role_based_access_control_enabled = true

  default_node_pool {
    name                         = "system"
    vm_size                      = var.system_node_vm_size
    auto_scaling_enabled         = true
    min_count                    = var.system_node_min_count
    max_count                    = var.system_node_max_count
    only_critical_addons_enabled = var.system_pool_critical_only
    zones                        = var.zones
    max_pods                     = 50
    temporary_name_for_rotation  = "systemtmp"
    # OS on the VM's local disk (faster, no managed-disk cost) and encryption at host for
    # temp disks and caches. Needs a VM size with a resource disk (the *ds_* sizes).
    os_disk_type            = "Ephemeral"
    os_disk_size_gb         = 64
    host_encryption_enabled = true

    upgrade_settings {
      max_surge = "33%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    network_data_plane  = "cilium"
    network_policy      = "cilium"
    load_balancer_sku   = "standard"
    outbound_type       = "loadBalancer"

    load_balancer_profile {
      outbound_ip_address_ids = [azurerm_public_ip.egress.id]
    }
  }

  dynamic "api_server_access_profile" {
    for_each = length(var.api_server_authorized_ip_ranges) > 0 ? [1] : []
    content {
      authorized_ip_ranges = var.api_server_authorized_ip_ranges
    }
  }

  # Container Insights into the environment's Log Analytics workspace.
  oms_agent {
    log_analytics_workspace_id      = var.log_analytics_workspace_id
    msi_auth_for_monitoring_enabled = true
  }

  key_vault_secrets_provider {
    secret_rotation_enabled = true
  }

  tags = var.tags
}

resource "azurerm_kubernetes_cluster_node_pool" "apps" {
  name                  = var.enable_spot_nodes ? "spot" : "apps"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.this.id
  vm_size               = var.user_node_vm_size
  mode                  = "User"
  auto_scaling_enabled  = true
  min_count             = var.user_node_min_count
  max_count             = var.user_node_max_count
  zones                 = var.zones
  max_pods              = 50

  os_disk_type            = "Ephemeral"
  os_disk_size_gb         = 64
  host_encryption_enabled = true

  # Spot: up to 90% cheaper, evictable; the chart tolerates the taint AKS puts on spot nodes.
  priority        = var.enable_spot_nodes ? "Spot" : "Regular"
  eviction_policy = var.enable_spot_nodes ? "Delete" : null
  spot_max_price  = var.enable_spot_nodes ? -1 : null
  node_taints     = var.enable_spot_nodes ? ["kubernetes.azure.com/scalesetpriority=spot:NoSchedule"] : []

  tags = var.tags
}
