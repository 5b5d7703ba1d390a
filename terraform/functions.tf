# The Cloud Functions (gen2) from functions/: one source zip, four entry points.
#   api        public HTTP (its rate limit is in code)
#   queue      internal HTTP, IAM-only invokers (the queue service routes)
#   on_upload  CloudEvent: object finalized in the uploads bucket, through Eventarc
#   dispatch   internal HTTP, IAM-only invokers; Cloud Scheduler calls it every minute

locals {
  functions_dir = "${local.repo_root}/functions"
  core_dir      = "${local.repo_root}/core" # the shared core both planes import

  function_names = {
    api       = "${local.p}-api"
    queue     = "${local.p}-queue"
    on_upload = "${local.p}-on-upload"
    dispatch  = "${local.p}-dispatch"
  }

  # Cloud Run's deterministic URLs (SERVICE-PROJECT_NUMBER.REGION.run.app; a gen2 function's
  # service has the function's name): known before the functions exist, so every function can
  # carry DISPATCH_URL, dispatch included, without a dependency cycle.
  function_urls = {
    for k, name in local.function_names : k => "https://${name}-${data.google_project.this.number}.${var.region}.run.app"
  }

  # The packages as deployed: every file under functions/ and core/ but caches.
  function_package_files = sort([
    for f in fileset(local.functions_dir, "**") : f
    if !strcontains(f, "__pycache__") && !endswith(f, ".pyc")
  ])
  core_package_files = sort([
    for f in fileset(local.core_dir, "**") : f
    if !strcontains(f, "__pycache__") && !endswith(f, ".pyc")
  ])

  # The zip's content hash names the object, so a code change redeploys the functions.
  function_source_hash = sha256(join("", concat(
    [filesha256("${path.module}/functions_shim/main.py"), filesha256("${local.functions_dir}/requirements.txt")],
    [for f in local.function_package_files : "${f}:${filesha256("${local.functions_dir}/${f}")}"],
    [for f in local.core_package_files : "core/${f}:${filesha256("${local.core_dir}/${f}")}"],
  )))

  # Every setting functions/config.py reads, on every function (REDIS_URL comes from Secret
  # Manager below; the *_EMULATOR_HOST variables belong to the local stack only).
  function_env = {
    GOOGLE_CLOUD_PROJECT  = var.project_id
    REGION                = var.region
    UPLOADS_BUCKET        = google_storage_bucket.bucket["uploads"].name
    DATA_BUCKET           = google_storage_bucket.bucket["data"].name
    WORKFLOW_NAME         = local.workflow_name
    MAX_CONCURRENT_JOBS   = tostring(var.max_concurrent_jobs)
    RATE_LIMIT_PER_MINUTE = tostring(var.rate_limit_per_minute)
    DEDUP_WINDOW_SECONDS  = tostring(var.dedup_window_seconds)
    LEASE_SECONDS         = tostring(var.lease_seconds)
    JOB_IMAGE             = local.job_image
    DEPTH_MODEL           = var.depth_model
    EXTRA_INPUT_BUCKETS   = join(",", var.extra_input_buckets)
    REDIS_CA_CERT         = join("\n", google_redis_instance.queue.server_ca_certs[*].cert) # every CA, rotation included
    DISPATCH_URL          = local.function_urls.dispatch
    TRUSTED_PROXY_HOPS    = tostring(var.trusted_proxy_hops)
    AUTH_AUDIENCE         = var.api_id_token_auth ? local.function_urls.api : ""
    MAX_ATTEMPTS          = tostring(var.max_attempts)
    FIRESTORE_MIRROR      = "true"
    SIGNED_URL_SECONDS    = tostring(var.signed_url_seconds)
    PRICE_TABLE           = var.price_table
    # STANDARD_HA replicates asynchronously to its one replica: an accept waits for it (WAIT), or
    # is written to Firestore when it does not answer in time (functions/intake/accept.py).
    REDIS_REPLICAS_TO_ACK    = "1"
    REDIS_ACK_TIMEOUT_MS     = tostring(var.redis_ack_timeout_ms)
    RECORD_RETENTION_SECONDS = tostring(var.record_retention_days * 86400)
  }

  # What dispatch alone reads besides: the machines, identity and network of the Batch jobs whose
  # bodies it builds (functions/dispatch/batch_job.py; JOB_IMAGE, DEPTH_MODEL and REGION are settings of
  # every function above).
  batch_env = {
    CPU_MACHINE_TYPE      = var.cpu_machine_type
    GPU_MACHINE_TYPE      = var.gpu_machine_type
    GPU_TYPE              = var.gpu_type
    GPU_COUNT             = tostring(var.gpu_count)
    GPU_DRIVER_VERSION    = var.gpu_driver_version
    PROVISIONING_MODEL    = var.use_spot ? "SPOT" : "STANDARD"
    BATCH_SERVICE_ACCOUNT = google_service_account.sa["batch"].email
    BATCH_NETWORK         = google_compute_network.vpc.id
    BATCH_SUBNETWORK      = google_compute_subnetwork.batch.id
  }

  function_build_service_account = google_service_account.sa["build"].id
}

data "archive_file" "functions" {
  type        = "zip"
  output_path = "${path.module}/build/functions-source.zip"

  # Root main.py re-exports the entry points; requirements.txt is the functions' own.
  source {
    content  = file("${path.module}/functions_shim/main.py")
    filename = "main.py"
  }

  source {
    content  = file("${local.functions_dir}/requirements.txt")
    filename = "requirements.txt"
  }

  dynamic "source" {
    for_each = local.function_package_files
    content {
      content  = file("${local.functions_dir}/${source.value}")
      filename = "functions/${source.value}"
    }
  }

  dynamic "source" {
    for_each = local.core_package_files
    content {
      content  = file("${local.core_dir}/${source.value}")
      filename = "core/${source.value}"
    }
  }
}

resource "google_storage_bucket_object" "functions_source" {
  name   = "functions/source-${local.function_source_hash}.zip"
  bucket = google_storage_bucket.bucket["sources"].name
  source = data.archive_file.functions.output_path
}

# What differs between the functions (the key is the entry point); the resource sets the rest
# the same for all of them.
#
# Capacity, from bench/function_capacity.py (docs/benchmarks.md "Function capacity"): one `api`
# instance pinned to one core, accepting with the replica's WAIT, ran 671 accepts/s at request
# concurrency 1 (p99 1.9 ms), 1,167/s at 16 (p99 28.6 ms) and 1,091/s at 32 (p99 60.8 ms), at a
# peak of 88-93 MiB. So `api` and `queue` take 16 requests at once on 1 vCPU (concurrency above 1
# needs at least 1 vCPU: https://cloud.google.com/functions/docs/configuring/concurrency), in
# 512M; a burst then waits on a busy instance rather than on a cold start, and `queue`'s cap of
# 10 instances is 160 requests in flight before a 429 (its callers, the workflow's status calls,
# retry a 429). `on_upload` (not measured: it reads object metadata) and `dispatch` (one pass at
# a time is the point) keep one request per instance.
locals {
  functions = {
    api = {
      description   = "splatpipe public API: trigger, preprocess, status."
      timeout       = 60
      cpu           = "1"
      concurrency   = 16
      max_instances = var.api_max_instances
      ingress       = "ALLOW_ALL"
      sa            = "api"
      upload_events = false
      batch_env     = false
    }
    queue = {
      description   = "splatpipe queue service: enqueue, next, status, queue statistics (IAM-only)."
      timeout       = 60
      cpu           = "1"
      concurrency   = 16
      max_instances = 10
      ingress       = var.internal_ingress
      sa            = "api"
      upload_events = false
      batch_env     = false
    }
    on_upload = {
      description   = "splatpipe upload handler: a finalized video or _UPLOAD_COMPLETE marker becomes a request."
      timeout       = 120
      cpu           = "0.5"
      concurrency   = 1
      max_instances = 10
      ingress       = "ALLOW_INTERNAL_ONLY" # Eventarc deliveries are internal
      sa            = "upload"
      upload_events = true
      batch_env     = false
    }
    dispatch = {
      description   = "splatpipe admission control: starts workflow executions, re-queues expired leases (IAM-only)."
      timeout       = 300
      cpu           = "0.5"
      concurrency   = 1
      max_instances = 3
      ingress       = var.internal_ingress
      sa            = "dispatch"
      upload_events = false
      batch_env     = true
    }
  }
}

resource "google_cloudfunctions2_function" "function" {
  #checkov:skip=CKV_GCP_124:Only the api instance has ALLOW_ALL ingress: api is splatpipe's public front door (POST /trigger-reconstruction, GET /status?callback_token=); clients call it from the internet, its rate limit and validation are in code. queue, dispatch and on_upload are internal-only (tests/terraform runs checkov again without inline skips to hold them to this check).
  for_each = local.functions

  project     = var.project_id
  name        = local.function_names[each.key]
  location    = var.region
  description = each.value.description
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = each.key
    docker_repository = google_artifact_registry_repository.functions.id
    service_account   = local.function_build_service_account
    source {
      storage_source {
        bucket = google_storage_bucket.bucket["sources"].name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.functions_memory
    available_cpu                    = each.value.cpu
    max_instance_request_concurrency = each.value.concurrency
    timeout_seconds                  = each.value.timeout
    max_instance_count               = each.value.max_instances
    ingress_settings                 = each.value.ingress
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.sa[each.value.sa].email
    vpc_connector                    = google_vpc_access_connector.functions.id
    vpc_connector_egress_settings    = "ALL_TRAFFIC"
    environment_variables            = each.value.batch_env ? merge(local.function_env, local.batch_env) : local.function_env

    secret_environment_variables {
      key        = "REDIS_URL"
      project_id = var.project_id
      secret     = google_secret_manager_secret.redis_url.secret_id
      version    = google_secret_manager_secret_version.redis_url.version
    }
  }

  # on_upload: at-least-once delivery with retries; the handler makes one request per object generation.
  dynamic "event_trigger" {
    for_each = each.value.upload_events ? [1] : []
    content {
      trigger_region        = var.region
      event_type            = "google.cloud.storage.object.v1.finalized"
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.sa["eventarc"].email

      event_filters {
        attribute = "bucket"
        value     = google_storage_bucket.bucket["uploads"].name
      }
    }
  }

  # The service agents and the build account hold their roles (iam.tf) before a function is
  # built; depends_on cannot differ per instance.
  depends_on = [
    time_sleep.iam_propagation,
    google_project_iam_member.gcs_publishes_events,
    google_secret_manager_secret_iam_member.redis_url,
    google_artifact_registry_repository_iam_member.build_pushes_function_images,
    google_storage_bucket_iam_member.component,
    google_project_iam_member.component,
  ]
}

# The functions were four separate resources: their state moves, nothing is replaced.
moved {
  from = google_cloudfunctions2_function.api
  to   = google_cloudfunctions2_function.function["api"]
}

moved {
  from = google_cloudfunctions2_function.queue
  to   = google_cloudfunctions2_function.function["queue"]
}

moved {
  from = google_cloudfunctions2_function.on_upload
  to   = google_cloudfunctions2_function.function["on_upload"]
}

moved {
  from = google_cloudfunctions2_function.dispatch
  to   = google_cloudfunctions2_function.function["dispatch"]
}

# --- Invokers (Cloud Run invoker on each function's service) ----------------------------------

# A gen2 function is invoked through its Cloud Run service, so run.invoker goes there.
# The public front door; every other function is IAM-only.
resource "google_cloud_run_service_iam_member" "api_public" {
  #checkov:skip=CKV_GCP_102:The api function is the public API by design (clients without Google identities call POST /trigger-reconstruction and GET /status?callback_token=); it rate-limits and validates in code. queue, dispatch and on_upload have service-account invokers only.
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.function["api"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

locals {
  # Which component may call which internal function.
  invokers = {
    "queue workflow"     = { function = "queue", sa = "workflow" }
    "dispatch workflow"  = { function = "dispatch", sa = "workflow" }
    "dispatch scheduler" = { function = "dispatch", sa = "scheduler" }
    "dispatch api"       = { function = "dispatch", sa = "api" }
    "dispatch upload"    = { function = "dispatch", sa = "upload" }
    "on_upload eventarc" = { function = "on_upload", sa = "eventarc" }
  }
}

resource "google_cloud_run_service_iam_member" "internal" {
  for_each = local.invokers

  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.function[each.value.function].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.sa[each.value.sa].member
}

# --- Cloud Scheduler: dispatch every minute with an OIDC token --------------------------------

resource "google_cloud_scheduler_job" "dispatch" {
  project          = var.project_id
  name             = "${local.p}-dispatch"
  region           = var.region
  description      = "Calls splatpipe dispatch: starts queued requests, re-queues expired leases."
  schedule         = var.dispatch_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "320s"

  # The next tick is the retry.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = local.function_urls.dispatch
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode("{}")

    oidc_token {
      service_account_email = google_service_account.sa["scheduler"].email
      audience              = local.function_urls.dispatch
    }
  }

  depends_on = [google_cloudfunctions2_function.function, google_cloud_run_service_iam_member.internal]
}
