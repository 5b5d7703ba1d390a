# The reconstruct workflow: workflows/reconstruct.yaml as it is in the repository (the same file
# the local engine runs), configured through user_env_vars that it reads with sys.get_env.

locals {
  workflow_env = {
    REGION                = var.region
    DATA_BUCKET           = google_storage_bucket.bucket["data"].name
    UPLOADS_BUCKET        = google_storage_bucket.bucket["uploads"].name
    QUEUE_URL             = local.function_urls.queue
    DISPATCH_URL          = local.function_urls.dispatch
    JOB_IMAGE             = local.job_image
    BATCH_SERVICE_ACCOUNT = google_service_account.sa["batch"].email
    BATCH_NETWORK         = google_compute_network.vpc.id
    BATCH_SUBNETWORK      = google_compute_subnetwork.batch.id
    GPU_TYPE              = var.gpu_type
    GPU_COUNT             = tostring(var.gpu_count)
    CPU_MACHINE_TYPE      = var.cpu_machine_type
    GPU_MACHINE_TYPE      = var.gpu_machine_type
    PROVISIONING_MODEL    = var.use_spot ? "SPOT" : "STANDARD"
    DEPTH_MODEL           = var.depth_model
  }
}

resource "google_workflows_workflow" "reconstruct" {
  project         = var.project_id
  name            = local.workflow_name
  region          = var.region
  description     = "splatpipe: frames -> sfm -> depth -> splat -> mesh, one Batch job per stage."
  service_account = google_service_account.sa["workflow"].id
  call_log_level  = "LOG_ERRORS_ONLY"
  labels          = local.labels
  source_contents = file("${local.repo_root}/workflows/reconstruct.yaml")
  user_env_vars   = local.workflow_env
  # The provider's default (true) makes `terraform destroy` fail on the workflow.
  deletion_protection = var.workflow_deletion_protection

  depends_on = [
    google_cloudfunctions2_function.function,
    google_project_iam_member.component,
    google_service_account_iam_member.workflow_acts_as_batch,
    google_cloud_run_service_iam_member.internal,
  ]
}
