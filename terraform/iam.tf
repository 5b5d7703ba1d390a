# One service account per component, each with only the roles it needs. Roles go on the narrowest
# resource that takes them (a bucket, a repository, a secret, a function, a service account);
# the project-level ones are those with no narrower resource (Firestore, Batch, Workflows,
# logging, Eventarc). No primitive roles (owner/editor/viewer) anywhere.

locals {
  service_accounts = {
    api       = "splatpipe api and queue functions (public API, queue service routes)"
    upload    = "splatpipe on_upload function (Cloud Storage upload events)"
    dispatch  = "splatpipe dispatch function (admission control: starts workflow executions)"
    eventarc  = "splatpipe Eventarc trigger identity (delivers upload events to on_upload)"
    scheduler = "splatpipe Cloud Scheduler identity (calls dispatch every minute)"
    workflow  = "splatpipe reconstruct workflow (creates the Batch jobs, reports status)"
    batch     = "splatpipe Batch job VMs (the reconstruction stages)"
    build     = "splatpipe builds (the functions' images and the job image)"
  }

  # Roles that exist only at project level (no narrower resource takes them).
  project_roles = {
    api_firestore = { sa = "api", role = "roles/datastore.user" }
    # POST /requests/{id}/cancel (functions/lifecycle/control.py): cancels the execution, deletes its Batch job.
    api_cancels_executions = { sa = "api", role = "roles/workflows.invoker" }
    api_deletes_batch_jobs = { sa = "api", role = google_project_iam_custom_role.api_batch_jobs.name }
    # GET /requests/{id}/log (functions/lifecycle/request_log.py): Cloud Logging's entries.list.
    api_reads_logs      = { sa = "api", role = "roles/logging.viewer" }
    upload_firestore    = { sa = "upload", role = "roles/datastore.user" }
    dispatch_firestore  = { sa = "dispatch", role = "roles/datastore.user" }
    dispatch_executions = { sa = "dispatch", role = "roles/workflows.invoker" }
    eventarc_receiver   = { sa = "eventarc", role = "roles/eventarc.eventReceiver" }
    # The workflow creates, polls and deletes the stages' Batch jobs.
    workflow_batch  = { sa = "workflow", role = "roles/batch.jobsEditor" }
    workflow_logs   = { sa = "workflow", role = "roles/logging.logWriter" }
    batch_agent     = { sa = "batch", role = "roles/batch.agentReporter" }
    batch_logs      = { sa = "batch", role = "roles/logging.logWriter" }
    batch_firestore = { sa = "batch", role = "roles/datastore.user" }
    build_logs      = { sa = "build", role = "roles/logging.logWriter" }
  }

  # REDIS_URL readers: the functions that use the queue.
  redis_url_readers = ["api", "upload", "dispatch"]

  # Object access per bucket (bucket-level IAM).
  bucket_roles = {
    # Inputs: the control plane checks that a request's input exists; the stages read it.
    uploads_api = { bucket = google_storage_bucket.bucket["uploads"].name, sa = "api", role = "roles/storage.objectViewer" }
    # POST /preprocess-video stores a direct upload (never overwrites: create, not update).
    uploads_api_create = { bucket = google_storage_bucket.bucket["uploads"].name, sa = "api", role = "roles/storage.objectCreator" }
    uploads_upload     = { bucket = google_storage_bucket.bucket["uploads"].name, sa = "upload", role = "roles/storage.objectViewer" }
    uploads_batch      = { bucket = google_storage_bucket.bucket["uploads"].name, sa = "batch", role = "roles/storage.objectViewer" }
    # Workspaces: request.json (control plane), stage outputs (Batch), signed output URLs (api).
    data_api      = { bucket = google_storage_bucket.bucket["data"].name, sa = "api", role = "roles/storage.objectUser" }
    data_upload   = { bucket = google_storage_bucket.bucket["data"].name, sa = "upload", role = "roles/storage.objectUser" }
    data_dispatch = { bucket = google_storage_bucket.bucket["data"].name, sa = "dispatch", role = "roles/storage.objectUser" }
    data_batch    = { bucket = google_storage_bucket.bucket["data"].name, sa = "batch", role = "roles/storage.objectUser" }
    data_workflow = { bucket = google_storage_bucket.bucket["data"].name, sa = "workflow", role = "roles/storage.objectViewer" }
    # Build inputs: the functions' source zip and Cloud Build's staged sources.
    sources_build = { bucket = google_storage_bucket.bucket["sources"].name, sa = "build", role = "roles/storage.objectViewer" }
  }

  extra_input_readers = {
    for pair in setproduct(var.extra_input_buckets, ["api", "upload", "batch"]) :
    "${pair[0]} ${pair[1]}" => { bucket = pair[0], sa = pair[1] }
  }
}

resource "google_service_account" "sa" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = "${local.p}-${each.key}"
  display_name = each.value

  depends_on = [google_project_service.enabled]
}

# The api reads and deletes a cancelled request's running Batch job (functions/dispatch/batch_control.py)
# and never creates one: roles/batch.jobsEditor would let it. A custom role with the two Batch
# permissions it needs (https://cloud.google.com/batch/docs/reference/permissions-and-roles,
# https://cloud.google.com/iam/docs/creating-custom-roles).
resource "google_project_iam_custom_role" "api_batch_jobs" {
  project     = var.project_id
  role_id     = "${replace(local.p, "-", "_")}_api_batch_jobs"
  title       = "splatpipe api: read and delete Batch jobs"
  description = "Lets the api function stop a cancelled request's Batch job; it cannot create jobs."
  permissions = ["batch.jobs.get", "batch.jobs.delete"]
}

resource "google_project_iam_member" "component" {
  for_each = local.project_roles

  project = var.project_id
  role    = each.value.role
  member  = google_service_account.sa[each.value.sa].member
}

resource "google_storage_bucket_iam_member" "component" {
  for_each = local.bucket_roles

  bucket = each.value.bucket
  role   = each.value.role
  member = google_service_account.sa[each.value.sa].member
}

resource "google_storage_bucket_iam_member" "extra_input_readers" {
  for_each = local.extra_input_readers

  bucket = each.value.bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.sa[each.value.sa].member
}

# --- Artifact Registry: the jobs pull the image, builds push images -------------------------

resource "google_artifact_registry_repository_iam_member" "batch_pulls_job_image" {
  project    = var.project_id
  location   = google_artifact_registry_repository.jobs.location
  repository = google_artifact_registry_repository.jobs.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.sa["batch"].member
}

resource "google_artifact_registry_repository_iam_member" "build_pushes_job_image" {
  project    = var.project_id
  location   = google_artifact_registry_repository.jobs.location
  repository = google_artifact_registry_repository.jobs.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.sa["build"].member
}

resource "google_artifact_registry_repository_iam_member" "build_pushes_function_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.sa["build"].member
}

# --- Secret Manager: REDIS_URL for the functions that use the queue --------------------------

resource "google_secret_manager_secret_iam_member" "redis_url" {
  for_each = toset(local.redis_url_readers)

  project   = var.project_id
  secret_id = google_secret_manager_secret.redis_url.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.sa[each.key].member
}

# --- Service-account-level grants ------------------------------------------------------------

# The workflow creates Batch jobs that run as the Batch job account: actAs on that account only.
resource "google_service_account_iam_member" "workflow_acts_as_batch" {
  service_account_id = google_service_account.sa["batch"].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.sa["workflow"].member
}

# Signed output URLs: with metadata-server credentials the api signs through the IAM
# signBlob API, as itself only.
resource "google_service_account_iam_member" "api_signs_urls" {
  service_account_id = google_service_account.sa["api"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.sa["api"].member
}

# --- Function builds: the source copy Cloud Functions makes -----------------------------------

# Cloud Functions (2nd gen) copies the source zip into its own bucket,
# gcf-v2-sources-PROJECT_NUMBER-REGION, and the build reads it from there
# (https://cloud.google.com/functions/docs/building); a user-specified build service account needs
# Storage Object Viewer for that, besides logging.logWriter and artifactregistry.writer
# (https://cloud.google.com/functions/docs/securing/build-custom-sa). The bucket does not exist
# before the first deploy, so the grant is on the project, conditioned on that bucket's name
# (https://cloud.google.com/iam/docs/conditions-resource-attributes#resource-name).
resource "google_project_iam_member" "build_reads_function_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.sa["build"].member

  condition {
    title       = "gcf-v2-sources bucket only"
    description = "The copy of the function sources Cloud Functions builds from."
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.function_sources_bucket}\")"
  }
}

# --- Service agents ---------------------------------------------------------------------------

locals {
  function_sources_bucket = "gcf-v2-sources-${data.google_project.this.number}-${var.region}"

  # Google-managed agents this module binds or whose role a first deploy depends on. An agent may
  # not exist yet right after its API is enabled; generateServiceIdentity creates it
  # (https://cloud.google.com/iam/docs/create-service-agents).
  service_agents = {
    pubsub   = "pubsub.googleapis.com"
    eventarc = "eventarc.googleapis.com"
  }
}

resource "google_project_service_identity" "agent" {
  for_each = local.service_agents
  provider = google-beta

  project = var.project_id
  service = each.value

  depends_on = [google_project_service.enabled]
}

# An agent created on request is granted nothing: it gets here the role it would have been granted
# automatically (same page). One resource per agent, each with its own checkov skip.
resource "google_project_iam_member" "pubsub_agent" {
  #checkov:skip=CKV_GCP_49:roles/pubsub.serviceAgent is the Google-managed Pub/Sub service agent's own role (granted automatically to an agent created implicitly); the agent is Google's, not one of this module's accounts.
  project = var.project_id
  role    = "roles/pubsub.serviceAgent"
  member  = google_project_service_identity.agent["pubsub"].member
}

resource "google_project_iam_member" "eventarc_agent" {
  #checkov:skip=CKV_GCP_49:roles/eventarc.serviceAgent is the Google-managed Eventarc service agent's own role (granted automatically to an agent created implicitly); on_upload's trigger cannot be created without it.
  project = var.project_id
  role    = "roles/eventarc.serviceAgent"
  member  = google_project_service_identity.agent["eventarc"].member
}

# A fresh project's first apply fails to create the trigger with "Permission denied while using
# the Eventarc Service Agent ... it may take a few minutes before all necessary permissions are
# propagated": the agent and its grants exist but have not propagated. The documented workaround
# is a wait between the agents' grants and the function
# (https://github.com/hashicorp/terraform-provider-google/issues/14584,
# https://github.com/hashicorp/terraform-provider-google/issues/25294). The build account's grants
# propagate in the same time. Only the first apply waits: the sleep is created once.
resource "time_sleep" "iam_propagation" {
  create_duration = "90s"

  depends_on = [
    google_project_iam_member.pubsub_agent,
    google_project_iam_member.eventarc_agent,
    google_project_iam_member.gcs_publishes_events,
    google_service_account_iam_member.pubsub_tokens_for_eventarc,
    google_project_iam_member.build_reads_function_sources,
    google_project_iam_member.component,
    google_artifact_registry_repository_iam_member.build_pushes_function_images,
  ]
}

# --- Eventarc: Cloud Storage -> Pub/Sub -> on_upload ------------------------------------------

data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.enabled]
}

# Cloud Storage events reach Eventarc through Pub/Sub, published by the Storage service agent
# (the data source above makes the agent if it does not exist yet).
resource "google_project_iam_member" "gcs_publishes_events" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# Pub/Sub mints the trigger's OIDC tokens (needed in projects whose Pub/Sub agent predates
# April 2021; harmless elsewhere): on the trigger account only.
resource "google_service_account_iam_member" "pubsub_tokens_for_eventarc" {
  service_account_id = google_service_account.sa["eventarc"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_project_service_identity.agent["pubsub"].member
}
