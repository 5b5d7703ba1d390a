# Monitoring: log-based metrics over the structured log events (core/log_events.py names every
# event and field used here; tests/terraform/test_terraform_monitoring.py checks it), one
# dashboard (dashboard.json.tftpl), an uptime check on the public api and four alert policies.
# What each metric and alert answers: docs/operations.md.
#
# A log-based metric counts the log entries its filter matches, or with a value extractor records
# the distribution of a field's values; label extractors give it labels
# (https://cloud.google.com/logging/docs/logs-based-metrics/distribution-metrics,
# https://cloud.google.com/logging/docs/logs-based-metrics/labels). Its type is
# logging.googleapis.com/user/NAME. Filters compare jsonPayload fields with the Logging query
# language, numbers numerically (https://cloud.google.com/logging/docs/view/logging-query-language).
# The filters do not name a resource: every splatpipe event in the project is counted, so one
# deployment per project (docs/deploy.md).

locals {
  # key -> the metric. value: the extracted field of a distribution (null: a counter of entries);
  # labels: label -> field; buckets: exponential bucket layout of a distribution
  # (scale x growth^i, https://cloud.google.com/logging/docs/logs-based-metrics/distribution-metrics).
  log_metrics = {
    requests_accepted = {
      description = "Requests enqueued (request.accepted; deduplicated ones are not counted), by source."
      filter      = "jsonPayload.event=\"request.accepted\""
      value       = null
      unit        = "1"
      labels      = { source = "jsonPayload.source" }
      buckets     = null
    }
    requests_rejected = {
      description = "Requests an intake refused (request.rejected), by reason and source."
      filter      = "jsonPayload.event=\"request.rejected\""
      value       = null
      unit        = "1"
      labels      = { reason = "jsonPayload.reason", source = "jsonPayload.source" }
      buckets     = null
    }
    requests_finished = {
      description = "Requests that ended (request.finished), by state (COMPLETED, FAILED, CANCELLED) and error code."
      filter      = "jsonPayload.event=\"request.finished\""
      value       = null
      unit        = "1"
      labels      = { state = "jsonPayload.state", error_code = "jsonPayload.error_code" }
      buckets     = null
    }
    request_cost_usd = {
      description = "Estimated cost of each finished request in USD (request.finished cost_usd), by state."
      filter      = "jsonPayload.event=\"request.finished\""
      value       = "jsonPayload.cost_usd"
      unit        = "{USD}"
      labels      = { state = "jsonPayload.state" }
      buckets     = { scale = 0.01, growth = 2, count = 20 }
    }
    stage_duration_s = {
      description = "Run time of each finished stage in seconds (stage.finished duration_s), by stage and state."
      filter      = "jsonPayload.event=\"stage.finished\""
      value       = "jsonPayload.duration_s"
      unit        = "s"
      labels      = { stage = "jsonPayload.stage", state = "jsonPayload.state" }
      buckets     = { scale = 1, growth = 2, count = 24 }
    }
    stage_gpu_seconds = {
      description = "GPU-seconds of each finished stage (stage.finished gpu_seconds: GPUs x run time), by stage and accelerator."
      filter      = "jsonPayload.event=\"stage.finished\""
      value       = "jsonPayload.gpu_seconds"
      unit        = "s"
      labels      = { stage = "jsonPayload.stage", accelerator = "jsonPayload.accelerator" }
      buckets     = { scale = 1, growth = 2, count = 24 }
    }
    stage_cost_usd = {
      description = "Estimated cost of each finished stage in USD (stage.finished cost_usd), by stage and provisioning model."
      filter      = "jsonPayload.event=\"stage.finished\""
      value       = "jsonPayload.cost_usd"
      unit        = "{USD}"
      labels      = { stage = "jsonPayload.stage", provisioning_model = "jsonPayload.provisioning_model" }
      buckets     = { scale = 0.01, growth = 2, count = 20 }
    }
    queue_queued = {
      description = "QUEUED requests at each of dispatch's looks at the queue (queue.stats queued)."
      filter      = "jsonPayload.event=\"queue.stats\""
      value       = "jsonPayload.queued"
      unit        = "1"
      labels      = {}
      buckets     = { scale = 1, growth = 2, count = 16 }
    }
    queue_running = {
      description = "PROCESSING requests at each of dispatch's looks at the queue (queue.stats running)."
      filter      = "jsonPayload.event=\"queue.stats\""
      value       = "jsonPayload.running"
      unit        = "1"
      labels      = {}
      buckets     = { scale = 1, growth = 2, count = 16 }
    }
    queue_oldest_wait_s = {
      description = "Wait so far of the oldest QUEUED request in seconds, at each of dispatch's looks (queue.stats oldest_wait_s)."
      filter      = "jsonPayload.event=\"queue.stats\""
      value       = "jsonPayload.oldest_wait_s"
      unit        = "s"
      labels      = {}
      buckets     = { scale = 1, growth = 2, count = 24 }
    }
    # The alert's threshold is in the filter, so the count is exact (a percentile of a
    # distribution is interpolated inside a bucket).
    queue_wait_exceeded = {
      description = "Looks at the queue (queue.stats) that found a request waiting longer than alert_queue_wait_hours."
      filter      = "jsonPayload.event=\"queue.stats\" AND jsonPayload.oldest_wait_s>=${var.alert_queue_wait_hours * 3600}"
      value       = null
      unit        = "1"
      labels      = {}
      buckets     = null
    }
    outbox_pending = {
      description = "Record versions not yet written to Firestore, after each of dispatch's catch-up passes (mirror.outbox pending)."
      filter      = "jsonPayload.event=\"mirror.outbox\""
      value       = "jsonPayload.pending"
      unit        = "1"
      labels      = {}
      buckets     = { scale = 1, growth = 2, count = 16 }
    }
    outbox_oldest_pending_s = {
      description = "Wait of the oldest version not yet in Firestore in seconds, after each catch-up pass (mirror.outbox oldest_pending_s)."
      filter      = "jsonPayload.event=\"mirror.outbox\""
      value       = "jsonPayload.oldest_pending_s"
      unit        = "s"
      labels      = {}
      buckets     = { scale = 1, growth = 2, count = 24 }
    }
    outbox_stuck = {
      description = "Catch-up passes (mirror.outbox) that left a version waiting longer than alert_outbox_stuck_minutes."
      filter      = "jsonPayload.event=\"mirror.outbox\" AND jsonPayload.oldest_pending_s>=${var.alert_outbox_stuck_minutes * 60}"
      value       = null
      unit        = "1"
      labels      = {}
      buckets     = null
    }
  }
}

resource "google_logging_metric" "metric" {
  for_each = local.log_metrics

  project     = var.project_id
  name        = "${local.p}/${each.key}"
  description = each.value.description
  filter      = each.value.filter

  value_extractor  = each.value.value == null ? null : "EXTRACT(${each.value.value})"
  label_extractors = { for label, field in each.value.labels : label => "EXTRACT(${field})" }

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = each.value.value == null ? "INT64" : "DISTRIBUTION"
    unit        = each.value.unit

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key        = labels.key
        value_type = "STRING"
      }
    }
  }

  dynamic "bucket_options" {
    for_each = each.value.buckets == null ? [] : [each.value.buckets]
    content {
      exponential_buckets {
        num_finite_buckets = bucket_options.value.count
        growth_factor      = bucket_options.value.growth
        scale              = bucket_options.value.scale
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

locals {
  log_metric_types = { for k, m in google_logging_metric.metric : k => "logging.googleapis.com/user/${m.name}" }

  # PromQL names of the same metrics: the first "/" becomes ":", every other character PromQL does
  # not allow "_"; a distribution is read as a histogram, NAME_sum, NAME_count and NAME_bucket
  # (https://cloud.google.com/monitoring/promql/promql-mapping).
  log_metric_promql = {
    for k, m in google_logging_metric.metric : k => "logging_googleapis_com:user_${replace(m.name, "/[^A-Za-z0-9_]/", "_")}"
  }

  alert_channels = concat(var.alert_notification_channels, [for c in google_monitoring_notification_channel.email : c.name])

  api_host = trimprefix(local.function_urls["api"], "https://")
}

# --- Notification channels ---------------------------------------------------------------------

resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_email_addresses)

  project      = var.project_id
  display_name = "${local.p} alerts: ${each.value}"
  type         = "email"
  labels       = { email_address = each.value }

  depends_on = [google_project_service.enabled]
}

# --- The public api's uptime -------------------------------------------------------------------

# Checks from several regions every var.uptime_check_period
# (https://cloud.google.com/monitoring/uptime-checks): GET /status with a callback token no request
# has. The answer, 404 "no request has this callback token" (functions/lifecycle/access.py), means
# the function runs and looked the token up in Redis; a Redis outage answers 5xx. The call is not
# rate-limited and creates nothing.
resource "google_monitoring_uptime_check_config" "api" {
  project      = var.project_id
  display_name = "${local.p} api"
  timeout      = "10s"
  period       = var.uptime_check_period

  http_check {
    path         = "/status"
    port         = 443
    use_ssl      = true
    validate_ssl = true
    headers      = { "X-Callback-Token" = "uptime-check" }

    accepted_response_status_codes {
      status_value = 404
    }
  }

  content_matchers {
    content = "no request has this callback token"
    matcher = "CONTAINS_STRING"
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = local.api_host
    }
  }

  depends_on = [google_project_service.enabled]
}

# --- Alert policies ----------------------------------------------------------------------------
# condition_threshold compares a time series, aligned and reduced, with a threshold; with a
# denominator_filter it compares the ratio of two; condition_absent fires when a series stops
# (https://cloud.google.com/monitoring/alerts/policies-in-api, "Types of conditions"). Such a
# filter names the metric type and the resource type: these events come from the functions, whose
# container logs Cloud Logging files under cloud_run_revision (2nd gen functions are Cloud Run
# services: https://cloud.google.com/run/docs/logging).

resource "google_monitoring_alert_policy" "failure_rate" {
  project               = var.project_id
  display_name          = "${local.p}: requests failing"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "FAILED / finished over ${var.alert_failure_window_minutes} min > ${var.alert_failure_rate}"
    condition_threshold {
      filter             = "metric.type=\"${local.log_metric_types["requests_finished"]}\" AND resource.type=\"cloud_run_revision\" AND metric.label.state=\"FAILED\""
      denominator_filter = "metric.type=\"${local.log_metric_types["requests_finished"]}\" AND resource.type=\"cloud_run_revision\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_failure_rate
      duration           = "0s"
      aggregations {
        alignment_period     = "${var.alert_failure_window_minutes * 60}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "${var.alert_failure_window_minutes * 60}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "More than ${var.alert_failure_rate * 100}% of the requests that ended in the last ${var.alert_failure_window_minutes} minutes FAILED. The dashboard's failure chart splits them by error code (docs/contracts.md, Error codes); the request's log: `jsonPayload.request_id=\"ID\"`."
  }
}

resource "google_monitoring_alert_policy" "queue_wait" {
  project               = var.project_id
  display_name          = "${local.p}: queue not draining"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "a request QUEUED for over ${var.alert_queue_wait_hours} h"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_types["queue_wait_exceeded"]}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  # Without dispatch's looks there is no queue.stats line and the condition above cannot fire:
  # dispatch runs every minute (Cloud Scheduler), so 15 silent minutes mean it does not run.
  conditions {
    display_name = "no queue.stats from dispatch for 15 min"
    condition_absent {
      filter   = "metric.type=\"${local.log_metric_types["queue_queued"]}\" AND resource.type=\"cloud_run_revision\""
      duration = "900s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_COUNT"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A request has waited longer than ${var.alert_queue_wait_hours} h in the queue, or dispatch has stopped reporting on it. Check that dispatch runs (Cloud Scheduler job ${local.p}-dispatch, its logs), the running requests against max_concurrent_jobs, and Batch quota in ${var.region}."
  }
}

resource "google_monitoring_alert_policy" "outbox_stuck" {
  project               = var.project_id
  display_name          = "${local.p}: Firestore mirror stuck"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "a version waiting over ${var.alert_outbox_stuck_minutes} min for Firestore"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_types["outbox_stuck"]}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "dispatch's catch-up pass left a record version unwritten to Firestore for over ${var.alert_outbox_stuck_minutes} minutes: clients reading Firestore see stale states (Redis, the truth, is unaffected). Check Firestore's availability and the dispatch account's datastore role."
  }
}

resource "google_monitoring_alert_policy" "api_uptime" {
  project               = var.project_id
  display_name          = "${local.p}: api down"
  combiner              = "OR"
  notification_channels = local.alert_channels

  # The uptime-check alert of https://cloud.google.com/monitoring/uptime-checks/uptime-alerting-policies:
  # more than one checker region failing the check (check_passed false) for the duration.
  conditions {
    display_name = "uptime check failing from more than one region"
    condition_threshold {
      filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type=\"uptime_url\" AND metric.label.check_id=\"${google_monitoring_uptime_check_config.api.uptime_check_id}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "300s"
      aggregations {
        alignment_period     = "1200s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.*"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "GET ${local.function_urls["api"]}/status does not answer 404 \"no request has this callback token\" from more than one region: the api function is down, or cannot reach Redis. Check the function's logs and the Memorystore instance."
  }
}

# --- The dashboard -----------------------------------------------------------------------------

# The template's `$${label}` is a chart legend's `${label}` (XyChart.DataSet.legendTemplate),
# escaped from templatefile().
resource "google_monitoring_dashboard" "splatpipe" {
  project = var.project_id
  dashboard_json = templatefile("${path.module}/dashboard.json.tftpl", {
    title        = "${local.p}: requests, queue, stages, cost"
    promql       = local.log_metric_promql
    api_service  = local.function_names["api"]
    uptime_alert = google_monitoring_alert_policy.api_uptime.name
    # The alerts' thresholds, drawn as lines on their charts.
    failure_rate_alert         = var.alert_failure_rate
    queue_wait_alert_minutes   = var.alert_queue_wait_hours * 60
    outbox_stuck_alert_minutes = var.alert_outbox_stuck_minutes
  })

  depends_on = [google_project_service.enabled]
}
