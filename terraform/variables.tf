variable "project_id" {
  description = "Google Cloud project to deploy splatpipe into."
  type        = string
}

variable "region" {
  description = "Region of the functions, the workflow, the Batch jobs, Redis, the buckets and Artifact Registry."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of every resource name (service accounts, buckets, functions, the workflow). Lower-case letters, digits and hyphens."
  type        = string
  default     = "splatpipe"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-16 characters of lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

# --- Batch jobs -------------------------------------------------------------------------------

variable "gpu_type" {
  description = "Accelerator type of the GPU stages' Batch VMs (e.g. nvidia-l4, nvidia-tesla-t4)."
  type        = string
  default     = "nvidia-l4"

  # L4 GPUs come only on G2 machine types, and G2 types carry only L4s
  # (https://cloud.google.com/compute/docs/accelerator-optimized-machines#g2-vms).
  validation {
    condition     = (var.gpu_type == "nvidia-l4") == startswith(var.gpu_machine_type, "g2-")
    error_message = "gpu_type nvidia-l4 goes with a g2-* gpu_machine_type (and a g2-* type carries nvidia-l4)."
  }
}

variable "gpu_driver_version" {
  description = "GPU_DRIVER_VERSION: the NVIDIA driver Batch installs on the GPU VMs (accelerators[].driverVersion, e.g. \"570.172.08\"); empty: the one Batch's installer picks. The job image is CUDA 12.8, which needs a 12.x driver (570 or newer for 12.8's own features)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9]+(\\.[0-9]+){1,2})?$", var.gpu_driver_version))
    error_message = "gpu_driver_version must be empty or a driver version such as 570.172.08."
  }
}

variable "gpu_count" {
  description = "GPUs per GPU stage VM: the number the machine type carries (g2-standard-8: 1 nvidia-l4; g2-standard-24: 2; a2-highgpu types name theirs, e.g. a2-highgpu-2g: 2); on an n1 type 1, 2 or 4 (8 for nvidia-tesla-v100)."
  type        = number
  default     = 1

  # Accelerator-optimized machine types carry a fixed number of GPUs of one model
  # (https://cloud.google.com/compute/docs/accelerator-optimized-machines): G2 from the table
  # below, A2 (a2-highgpu-1g/2g/4g/8g, the A2 types the Batch job builder knows) in the name (-Ng); GPUs attach to N1 types in the counts each model allows
  # (https://cloud.google.com/compute/docs/gpus). Any other machine type carries no GPU.
  validation {
    condition = (
      startswith(var.gpu_machine_type, "g2-") ? lookup(local.g2_gpus, var.gpu_machine_type, -1) == var.gpu_count
      : can(regex("^a2-highgpu-[1248]g$", var.gpu_machine_type)) ? var.gpu_type == "nvidia-tesla-a100" && tonumber(regex("([0-9]+)g$", var.gpu_machine_type)[0]) == var.gpu_count
      : startswith(var.gpu_machine_type, "n1-") ? contains(lookup(local.n1_gpu_counts, var.gpu_type, []), var.gpu_count)
      : false
    )
    error_message = "gpu_count must be the number of GPUs gpu_machine_type carries (g2-standard-4/8/12/16/32: 1, g2-standard-24: 2, g2-standard-48: 4, g2-standard-96: 8; a2-highgpu-2g: 2 nvidia-tesla-a100; n1-*: 1, 2 or 4 nvidia-tesla-t4, up to 8 nvidia-tesla-v100)."
  }
}

locals {
  # NVIDIA L4s per G2 machine type (https://cloud.google.com/compute/docs/accelerator-optimized-machines#g2-vms).
  g2_gpus = {
    "g2-standard-4"  = 1
    "g2-standard-8"  = 1
    "g2-standard-12" = 1
    "g2-standard-16" = 1
    "g2-standard-24" = 2
    "g2-standard-32" = 1
    "g2-standard-48" = 4
    "g2-standard-96" = 8
  }

  # GPUs per N1 VM by model (https://cloud.google.com/compute/docs/gpus).
  n1_gpu_counts = {
    "nvidia-tesla-t4"   = [1, 2, 4]
    "nvidia-tesla-p4"   = [1, 2, 4]
    "nvidia-tesla-p100" = [1, 2, 4]
    "nvidia-tesla-v100" = [1, 2, 4, 8]
  }
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU stages (depth, splat, mesh); must accept gpu_type x gpu_count (g2-* for L4)."
  type        = string
  default     = "g2-standard-8"
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU stages (frames, sfm)."
  type        = string
  default     = "n2-standard-8"
}

variable "use_spot" {
  description = "Run Batch jobs on Spot VMs (PROVISIONING_MODEL; cheaper, may be preempted: the workflow re-creates a preempted stage's job and finished stages are skipped). A request's options.spot overrides it."
  type        = bool
  default     = true
}

variable "price_table" {
  description = "Prices for the estimated cost of each request (PRICE_TABLE on every function): JSON {\"machines\": {TYPE: {\"STANDARD\": usd_per_hour, \"SPOT\": usd_per_hour}}, \"accelerators\": {GPU_TYPE: {...per GPU}}, \"region\", \"source\", \"as_of\"}, each entry replacing core/pricing.py's table (us-central1, read 2026-12-07). Set it for another region, other machine types, or your billing export's prices. Empty: that table."
  type        = string
  default     = ""

  validation {
    condition     = var.price_table == "" || can(keys(jsondecode(var.price_table)))
    error_message = "price_table must be empty or a JSON object (see its description)."
  }
}

variable "job_image_name" {
  description = "Name of the Batch job image inside the Artifact Registry repository."
  type        = string
  default     = "splatpipe-jobs"
}

variable "job_image_tag" {
  description = "Tag of the Batch job image the workflow runs (build and push it with cloudbuild.yaml)."
  type        = string
  default     = "latest"
}

variable "depth_model" {
  description = "Depth-Anything-V2 model for the depth stage: a Hugging Face id or a gs:// directory holding the model."
  type        = string
  default     = "depth-anything/Depth-Anything-V2-Small-hf"
}

# --- Control plane ----------------------------------------------------------------------------

variable "max_concurrent_jobs" {
  description = "MAX_CONCURRENT_JOBS: requests processed at once; dispatch starts no more executions than this."
  type        = number
  default     = 2

  validation {
    condition     = var.max_concurrent_jobs >= 1
    error_message = "max_concurrent_jobs must be at least 1."
  }
}

variable "rate_limit_per_minute" {
  description = "RATE_LIMIT_PER_MINUTE: reconstruction triggers allowed per caller per minute."
  type        = number
  default     = 10

  validation {
    condition     = var.rate_limit_per_minute >= 1
    error_message = "rate_limit_per_minute must be at least 1."
  }
}

variable "dedup_window_seconds" {
  description = "DEDUP_WINDOW_SECONDS: how long an identical request is answered with the first one."
  type        = number
  default     = 3600
}

variable "redis_ack_timeout_ms" {
  description = "REDIS_ACK_TIMEOUT_MS: how long an accept waits for the Memorystore replica to confirm it (Redis WAIT) before writing the request to Firestore instead."
  type        = number
  default     = 500

  validation {
    condition     = var.redis_ack_timeout_ms >= 10
    error_message = "redis_ack_timeout_ms must be at least 10."
  }
}

variable "record_retention_days" {
  description = "RECORD_RETENTION_SECONDS, in days: how long a finished request's record stays in Redis once Firestore holds it; Firestore keeps answering for it afterwards. 0 keeps records in Redis for ever."
  type        = number
  default     = 7

  validation {
    condition     = var.record_retention_days >= 0
    error_message = "record_retention_days must be 0 or more."
  }
}

variable "lease_seconds" {
  description = "LEASE_SECONDS: how long a PROCESSING request may go without an update before dispatch re-queues it."
  type        = number
  default     = 21600
}

variable "max_attempts" {
  description = "MAX_ATTEMPTS: how many times a request is handed out (lease expiries included) before it is failed."
  type        = number
  default     = 3
}

variable "trusted_proxy_hops" {
  description = "TRUSTED_PROXY_HOPS: proxies in front of the api that append the client address to X-Forwarded-For (Cloud Run's front end: 1; add 1 for an external HTTPS load balancer). The rate limit keys on that entry."
  type        = number
  default     = 1
}

variable "api_id_token_auth" {
  description = "Key the api's rate limit on the caller's verified Google ID token (AUTH_AUDIENCE = the api's URL) instead of the client address; a request with an invalid token is then a 401."
  type        = bool
  default     = false
}

variable "signed_url_seconds" {
  description = "SIGNED_URL_SECONDS: lifetime of the signed output URLs in GET /status (0: plain gs:// URIs)."
  type        = number
  default     = 3600
}

variable "extra_input_buckets" {
  description = "EXTRA_INPUT_BUCKETS: existing buckets a request's input may name besides the uploads bucket; the control plane and the Batch jobs get read access to them."
  type        = list(string)
  default     = []
}

variable "upload_expiry_days" {
  description = "Days after which uploaded objects are deleted from the uploads bucket."
  type        = number
  default     = 7

  validation {
    condition     = var.upload_expiry_days >= 1
    error_message = "upload_expiry_days must be at least 1."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept (every bucket is versioned) before it is removed."
  type        = number
  default     = 7
}

variable "dispatch_schedule" {
  description = "Cloud Scheduler cron schedule that calls dispatch (admission control and lease expiry)."
  type        = string
  default     = "* * * * *"
}

variable "internal_ingress" {
  description = "Ingress of the internal functions (queue, dispatch, on_upload). ALLOW_INTERNAL_ONLY admits Workflows, Cloud Scheduler, Eventarc and the functions' own VPC egress; ALLOW_ALL lets operators reach them from outside (IAM still applies)."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_INTERNAL_ONLY", "ALLOW_ALL"], var.internal_ingress)
    error_message = "internal_ingress must be ALLOW_INTERNAL_ONLY or ALLOW_ALL."
  }
}

variable "api_max_instances" {
  description = "Most instances of the public api function (a cost ceiling; the per-caller rate limit is in code). Each takes 16 requests at once; one measured about 1,100 accepts/s (bench/function_capacity.py), so 10 carry twenty times the 500/s goal."
  type        = number
  default     = 10
}

variable "functions_memory" {
  description = "Memory of each function (e.g. 512M)."
  type        = string
  default     = "512M"
}

# --- Redis, Firestore, network ----------------------------------------------------------------

variable "redis_memory_size_gb" {
  description = "Memorystore for Redis capacity in GiB (standard tier)."
  type        = number
  default     = 1
}

variable "redis_version" {
  description = "Memorystore for Redis version."
  type        = string
  default     = "REDIS_7_2"
}

variable "firestore_location" {
  description = "Firestore location (a region such as us-central1 or a multi-region such as nam5). Empty: the region."
  type        = string
  default     = ""
}

variable "create_firestore_database" {
  description = "Create the project's (default) Firestore database in native mode. Set false when the project already has one."
  type        = bool
  default     = true
}

variable "connector_cidr" {
  description = "/28 range of the Serverless VPC Access connector's subnet."
  type        = string
  default     = "10.8.0.0/28"
}

variable "batch_cidr" {
  description = "Range of the subnet the Batch job VMs may use (Private Google Access and Cloud NAT, no external IPs needed)."
  type        = string
  default     = "10.10.0.0/20"
}

variable "workflow_deletion_protection" {
  description = "Refuse to delete the reconstruct workflow (terraform destroy then fails on it until this is set false and applied). Off by default: the workflow holds no data, its source is workflows/reconstruct.yaml, and apply re-creates it."
  type        = bool
  default     = false
}

variable "force_destroy_buckets" {
  description = "Let terraform destroy delete buckets that still hold objects (trial environments only)."
  type        = bool
  default     = false
}

# --- Monitoring (monitoring.tf; docs/operations.md) --------------------------------------------

variable "alert_notification_channels" {
  description = "Existing Cloud Monitoring notification channels every alert policy notifies (projects/PROJECT/notificationChannels/ID)."
  type        = list(string)
  default     = []
}

variable "alert_email_addresses" {
  description = "Email addresses to notify of every alert: one email notification channel is created per address."
  type        = list(string)
  default     = []
}

variable "alert_failure_rate" {
  description = "Alert when more than this share (0-1) of the requests that ended in alert_failure_window_minutes FAILED."
  type        = number
  default     = 0.25

  validation {
    condition     = var.alert_failure_rate > 0 && var.alert_failure_rate < 1
    error_message = "alert_failure_rate is a share between 0 and 1 (exclusive)."
  }
}

variable "alert_failure_window_minutes" {
  description = "Window of the failure-rate alert, in minutes: the requests ended within it are compared."
  type        = number
  default     = 60

  validation {
    condition     = var.alert_failure_window_minutes >= 5 && var.alert_failure_window_minutes <= 1440
    error_message = "alert_failure_window_minutes must be 5-1440."
  }
}

variable "alert_queue_wait_hours" {
  description = "Alert when a request has waited in the queue (QUEUED) longer than this many hours."
  type        = number
  default     = 2

  validation {
    condition     = var.alert_queue_wait_hours > 0
    error_message = "alert_queue_wait_hours must be positive."
  }
}

variable "alert_outbox_stuck_minutes" {
  description = "Alert when a record version has waited longer than this many minutes to be written to Firestore (the mirror's outbox)."
  type        = number
  default     = 15

  validation {
    condition     = var.alert_outbox_stuck_minutes > 0
    error_message = "alert_outbox_stuck_minutes must be positive."
  }
}

variable "uptime_check_period" {
  description = "How often the uptime check calls the public api from each checker region: 60s, 300s, 600s or 900s."
  type        = string
  default     = "300s"

  validation {
    condition     = contains(["60s", "300s", "600s", "900s"], var.uptime_check_period)
    error_message = "uptime_check_period must be one of 60s, 300s, 600s, 900s."
  }
}
