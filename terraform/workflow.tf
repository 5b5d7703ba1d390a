# The reconstruct workflow: workflows/reconstruct.yaml as it is in the repository (the same file
# the local engine runs), configured through user_env_vars that it reads with sys.get_env. It
# creates, polls and deletes the Batch jobs (roles/batch.jobsEditor and actAs on the Batch job
# account, iam.tf).

locals {
  # What the workflow reads with sys.get_env. The Batch jobs' machines, image and identity are in
  # the Job bodies dispatch builds (functions.tf, local.batch_env) and passes in the execution's
  # argument.
  workflow_env = {
    QUEUE_URL    = local.function_urls.queue
    DISPATCH_URL = local.function_urls.dispatch
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
