output "api_url" {
  description = "URL of the public api function (POST /trigger-reconstruction, GET /status/...)."
  value       = google_cloudfunctions2_function.function["api"].service_config[0].uri
}

output "queue_url" {
  description = "URL of the internal queue function (IAM-only; reachable from inside the project unless internal_ingress = ALLOW_ALL)."
  value       = google_cloudfunctions2_function.function["queue"].service_config[0].uri
}

output "dispatch_url" {
  description = "URL of the internal dispatch function (IAM-only)."
  value       = google_cloudfunctions2_function.function["dispatch"].service_config[0].uri
}

output "uploads_bucket" {
  description = "Bucket clients upload videos and photo sets to (gs://UPLOADS_BUCKET/{session_id}/...); uploads expire after upload_expiry_days."
  value       = google_storage_bucket.bucket["uploads"].name
}

output "data_bucket" {
  description = "Bucket of the request workspaces (gs://DATA_BUCKET/jobs/{request_id}/...)."
  value       = google_storage_bucket.bucket["data"].name
}

output "sources_bucket" {
  description = "Bucket of the functions' source zip and Cloud Build's staged sources."
  value       = google_storage_bucket.bucket["sources"].name
}

output "workflow_name" {
  description = "Name of the reconstruct workflow (WORKFLOW_NAME)."
  value       = google_workflows_workflow.reconstruct.name
}

output "artifact_registry_repository" {
  description = "Docker repository of the Batch job image (REGION-docker.pkg.dev/PROJECT/REPOSITORY)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.jobs.repository_id}"
}

output "job_image" {
  description = "The job image the workflow runs (JOB_IMAGE); push it with job_image_build_command."
  value       = local.job_image
}

output "job_image_build_command" {
  description = "Builds batch_jobs/Dockerfile with Cloud Build (cloudbuild.yaml) and pushes it as job_image; run it from the repository root."
  value = join(" ", [
    "gcloud builds submit --project=${var.project_id} --region=${var.region}",
    "--config=cloudbuild.yaml",
    "--service-account=${google_service_account.sa["build"].id}",
    "--gcs-source-staging-dir=gs://${google_storage_bucket.bucket["sources"].name}/cloudbuild/source",
    "--substitutions=_REPOSITORY=${google_artifact_registry_repository.jobs.repository_id},_IMAGE=${var.job_image_name},_TAG=${var.job_image_tag}",
    ".",
  ])
}

output "service_accounts" {
  description = "Email of each component's service account (api, upload, dispatch, eventarc, scheduler, workflow, batch, build)."
  value       = { for k, sa in google_service_account.sa : k => sa.email }
}

output "redis_host" {
  description = "Private address of the Memorystore for Redis instance (TLS port 6378; the URL with AUTH is in the redis_url_secret)."
  value       = google_redis_instance.queue.host
}

output "redis_url_secret" {
  description = "Secret Manager secret holding REDIS_URL (rediss://:AUTH@host:port/0)."
  value       = google_secret_manager_secret.redis_url.id
}

output "batch_subnetwork" {
  description = "Subnetwork for the Batch job VMs (Private Google Access and Cloud NAT; no external IPs needed)."
  value       = google_compute_subnetwork.batch.id
}

output "dashboard_url" {
  description = "The Cloud Monitoring dashboard of requests, queue, stages, GPU hours and cost (docs/operations.md)."
  value       = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.splatpipe.id), 3)}?project=${var.project_id}"
}

output "log_based_metrics" {
  description = "Metric type of each log-based metric (logging.googleapis.com/user/...), by key of local.log_metrics in monitoring.tf."
  value       = local.log_metric_types
}

output "alert_policies" {
  description = "Resource name of each alert policy: failure_rate, queue_wait, outbox_stuck, api_uptime."
  value = {
    failure_rate = google_monitoring_alert_policy.failure_rate.name
    queue_wait   = google_monitoring_alert_policy.queue_wait.name
    outbox_stuck = google_monitoring_alert_policy.outbox_stuck.name
    api_uptime   = google_monitoring_alert_policy.api_uptime.name
  }
}

output "uptime_check_id" {
  description = "Id of the uptime check on the public api (GET /status with an unknown callback token answers 404)."
  value       = google_monitoring_uptime_check_config.api.uptime_check_id
}
