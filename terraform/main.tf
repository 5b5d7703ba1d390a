# splatpipe on Google Cloud: APIs, storage, Firestore, Artifact Registry and the names shared by
# the other files (network.tf: VPC, Redis and its secret; iam.tf: service accounts and roles;
# functions.tf: the Cloud Functions, the Eventarc trigger and the scheduler; workflow.tf).

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  p         = var.name_prefix
  repo_root = "${path.module}/.."
  labels    = merge({ app = "splatpipe" }, var.labels)

  firestore_location = coalesce(var.firestore_location, var.region)

  # The short name: dispatch builds the execution's parent from GOOGLE_CLOUD_PROJECT, REGION and
  # this (a literal here, so the functions do not depend on the workflow that calls them).
  workflow_name = "${local.p}-reconstruct"

  job_image = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.jobs.repository_id}/${var.job_image_name}:${var.job_image_tag}"

  services = [
    "artifactregistry.googleapis.com",
    "batch.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "redis.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "vpcaccess.googleapis.com",
    "workflowexecutions.googleapis.com",
    "workflows.googleapis.com",
  ]
}

resource "google_project_service" "enabled" {
  for_each = toset(local.services)

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# --- Buckets ----------------------------------------------------------------------------------
# Every bucket: uniform bucket-level access, public access prevention enforced, versioning with
# old versions removed after var.noncurrent_version_days, access logs to the access-logs bucket.

resource "google_storage_bucket" "access_logs" {
  #checkov:skip=CKV_GCP_62:This bucket is the access-log sink of the other buckets; logging its own access would log the log writes.
  name                        = "${var.project_id}-${local.p}-access-logs"
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = local.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

# Cloud Storage writes usage and storage logs as this group (documented access-log writer).
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

locals {
  # Old object versions go after var.noncurrent_version_days, in every bucket.
  noncurrent_versions_rule = {
    condition = { days_since_noncurrent_time = var.noncurrent_version_days, with_state = "ARCHIVED" }
    action    = "Delete"
  }

  # The buckets that log to access_logs, with what differs between them (the key names the bucket).
  buckets = {
    # Uploads are inputs only: a request copies nothing, the stages read them once (frames).
    uploads = {
      force_destroy = var.force_destroy_buckets
      lifecycle_rules = [
        { condition = { age = var.upload_expiry_days }, action = "Delete" },
        local.noncurrent_versions_rule,
        { condition = { age = 1 }, action = "AbortIncompleteMultipartUpload" },
      ]
    }
    # Request workspaces. Stages overwrite their outputs on a rerun; keep replaced versions only briefly.
    data = {
      force_destroy   = var.force_destroy_buckets
      lifecycle_rules = [local.noncurrent_versions_rule]
    }
    # The functions' source zips and Cloud Build's staged sources (cloudbuild.yaml).
    sources = {
      force_destroy = true # holds only build inputs that Terraform or a build re-creates
      lifecycle_rules = [
        { condition = { age = 7, matches_prefix = ["cloudbuild/"] }, action = "Delete" },
        local.noncurrent_versions_rule,
      ]
    }
  }
}

resource "google_storage_bucket" "bucket" {
  for_each = local.buckets

  name                        = "${var.project_id}-${local.p}-${each.key}"
  project                     = var.project_id
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = each.value.force_destroy
  labels                      = local.labels

  versioning {
    enabled = true
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "${each.key}/"
  }

  # The results page (GET /view/{id} on the api) reads a request's outputs through signed URLs from
  # the browser: the data bucket answers GET from the api's origin
  # (https://cloud.google.com/storage/docs/using-cors).
  dynamic "cors" {
    for_each = each.key == "data" ? [local.function_urls["api"]] : []
    content {
      origin          = [cors.value]
      method          = ["GET", "HEAD"]
      response_header = ["Content-Type", "Content-Length", "ETag"]
      max_age_seconds = 3600
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.lifecycle_rules
    content {
      condition {
        age                        = lookup(lifecycle_rule.value.condition, "age", null)
        days_since_noncurrent_time = lookup(lifecycle_rule.value.condition, "days_since_noncurrent_time", null)
        with_state                 = lookup(lifecycle_rule.value.condition, "with_state", null)
        matches_prefix             = lookup(lifecycle_rule.value.condition, "matches_prefix", null)
      }
      action {
        type = lifecycle_rule.value.action
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

# The buckets were three separate resources: their state moves, nothing is replaced.
moved {
  from = google_storage_bucket.uploads
  to   = google_storage_bucket.bucket["uploads"]
}

moved {
  from = google_storage_bucket.data
  to   = google_storage_bucket.bucket["data"]
}

moved {
  from = google_storage_bucket.sources
  to   = google_storage_bucket.bucket["sources"]
}

# --- Firestore --------------------------------------------------------------------------------

resource "google_firestore_database" "default" {
  count = var.create_firestore_database ? 1 : 0

  project                           = var.project_id
  name                              = "(default)"
  location_id                       = local.firestore_location
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # Request history outlives an environment: destroy leaves the database in place.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.enabled]
}

# --- Artifact Registry ------------------------------------------------------------------------

resource "google_artifact_registry_repository" "jobs" {
  #checkov:skip=CKV_GCP_84:The job image holds public code and packages only, no data or secrets; Google-managed encryption at rest suffices and a CMEK key ring would be this module's only KMS dependency.
  project       = var.project_id
  location      = var.region
  repository_id = "${local.p}-jobs"
  description   = "splatpipe Batch job image (built by cloudbuild.yaml)."
  format        = "DOCKER"
  labels        = local.labels

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Holds the functions' build images (public code, no secrets: REDIS_URL comes from Secret Manager at run time); Google-managed encryption at rest suffices.
  project       = var.project_id
  location      = var.region
  repository_id = "${local.p}-functions"
  description   = "splatpipe Cloud Functions build images."
  format        = "DOCKER"
  labels        = local.labels

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.enabled]
}
