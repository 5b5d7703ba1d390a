# The VPC the functions reach Redis through (a Serverless VPC Access connector; all their egress
# goes through it so their calls to the internal functions count as internal), a subnet for the
# Batch job VMs, Cloud NAT for outbound internet (webhooks, model downloads) without external
# IPs, and Memorystore for Redis with AUTH, TLS and RDB persistence.

resource "google_compute_network" "vpc" {
  project                 = var.project_id
  name                    = "${local.p}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "connector" {
  project                  = var.project_id
  name                     = "${local.p}-connector"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.connector_cidr
  private_ip_google_access = true # Google APIs and the internal functions' run.app URLs

  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_subnetwork" "batch" {
  project                  = var.project_id
  name                     = "${local.p}-batch"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.batch_cidr
  private_ip_google_access = true # Artifact Registry, Cloud Storage, Firestore without external IPs

  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Nothing in this VPC serves inbound traffic: an explicit, logged deny (the connector's own
# health-check rules are created by Serverless VPC Access at a higher priority).
resource "google_compute_firewall" "deny_all_ingress" {
  project     = var.project_id
  name        = "${local.p}-deny-all-ingress"
  network     = google_compute_network.vpc.id
  direction   = "INGRESS"
  priority    = 65534
  description = "splatpipe serves no inbound traffic inside its VPC."

  deny {
    protocol = "all"
  }

  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "nat" {
  project = var.project_id
  name    = "${local.p}-router"
  region  = var.region
  network = google_compute_network.vpc.id
}

resource "google_compute_router_nat" "nat" {
  project                            = var.project_id
  name                               = "${local.p}-nat"
  router                             = google_compute_router.nat.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

resource "google_vpc_access_connector" "functions" {
  project       = var.project_id
  name          = "${local.p}-conn"
  region        = var.region
  machine_type  = "e2-micro"
  min_instances = 2
  max_instances = 3

  subnet {
    name = google_compute_subnetwork.connector.name
  }
}

resource "google_redis_instance" "queue" {
  project        = var.project_id
  name           = "${local.p}-queue"
  display_name   = "splatpipe queue"
  region         = var.region
  tier           = "STANDARD_HA"
  memory_size_gb = var.redis_memory_size_gb
  redis_version  = var.redis_version

  authorized_network      = google_compute_network.vpc.id
  connect_mode            = "DIRECT_PEERING"
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = "ONE_HOUR"
  }

  # A queue must never lose keys to eviction: full memory is an error, not silent data loss.
  redis_configs = {
    "maxmemory-policy" = "noeviction"
  }

  labels = local.labels

  depends_on = [google_project_service.enabled]
}

# REDIS_URL holds the AUTH string, so it reaches the functions from Secret Manager, never as a
# plain environment variable. TLS (rediss, port 6378) with REDIS_CA_CERT as the trust anchor.
resource "google_secret_manager_secret" "redis_url" {
  project   = var.project_id
  secret_id = "${local.p}-redis-url"
  labels    = local.labels

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "redis_url" {
  secret      = google_secret_manager_secret.redis_url.id
  secret_data = "rediss://:${urlencode(google_redis_instance.queue.auth_string)}@${google_redis_instance.queue.host}:${google_redis_instance.queue.port}/0"
}
