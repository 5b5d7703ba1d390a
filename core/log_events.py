"""The structured log events: their names and the fields each one carries.

Every process (the functions, the stage runner in a Batch task, the local stack) writes one JSON
object per line in the shape Cloud Logging parses into `jsonPayload`
(https://cloud.google.com/logging/docs/structured-logging): `severity`, `message`, and the fields
below. Terraform's log-based metrics and alerts (terraform/monitoring.tf) filter on these names,
and a test checks every name they use is stated here.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    """The `event` field of a structured log line."""

    REQUEST_ACCEPTED = "request.accepted"  # a new request was enqueued (not a deduplicated one)
    REQUEST_REJECTED = "request.rejected"  # an intake refused a request: `reason`
    REQUEST_FINISHED = "request.finished"  # a request reached COMPLETED, FAILED or CANCELLED
    STAGE_STARTED = "stage.started"  # a stage's PUT /status said RUNNING
    STAGE_FINISHED = "stage.finished"  # a stage ended: SUCCEEDED, FAILED or SKIPPED
    QUEUE_STATS = "queue.stats"  # dispatch's periodic look at the queue
    OUTBOX_STATS = "mirror.outbox"  # the Firestore mirror's backlog, after dispatch's catch-up pass


# Field names (the keys of a log line besides `severity` and `message`).
REQUEST_ID = "request_id"
STAGE = "stage"
EVENT = "event"
STATE = "state"  # the request's or the stage's state at the event
REASON = "reason"  # request.rejected: why (a short code: "invalid", "rate_limited", "too_large", ...)
ERROR_CODE = "error_code"  # a FAILED request's or stage's error code; a rejection's exact refusal code
SOURCE = "source"  # how a request came in: "api", "upload", ...
DURATION_S = "duration_s"  # seconds: a stage's run time, or a request's from acceptance to the end
GPU_SECONDS = "gpu_seconds"  # stage.finished: GPU count x run time (0 on a CPU machine)
MACHINE_TYPE = "machine_type"
ACCELERATOR = "accelerator"  # the GPU type, "" on a CPU machine
PROVISIONING_MODEL = "provisioning_model"  # "STANDARD" or "SPOT"
COST_USD = "cost_usd"  # the estimated cost (core.pricing): of the stage, or of the whole request
QUEUED = "queued"  # queue.stats: QUEUED requests
RUNNING = "running"  # queue.stats: PROCESSING requests
OLDEST_WAIT_S = "oldest_wait_s"  # queue.stats: the oldest QUEUED request's wait so far
PENDING = "pending"  # mirror.outbox: versions not yet written to Firestore
OLDEST_PENDING_S = "oldest_pending_s"  # mirror.outbox: how long the oldest of them has waited

FIELDS: dict[Event, tuple[str, ...]] = {
    Event.REQUEST_ACCEPTED: (REQUEST_ID, SOURCE),
    Event.REQUEST_REJECTED: (REASON, SOURCE, ERROR_CODE),
    Event.REQUEST_FINISHED: (REQUEST_ID, STATE, ERROR_CODE, DURATION_S, COST_USD),
    Event.STAGE_STARTED: (REQUEST_ID, STAGE),
    Event.STAGE_FINISHED: (REQUEST_ID, STAGE, STATE, ERROR_CODE, DURATION_S, GPU_SECONDS, MACHINE_TYPE,
                           ACCELERATOR, PROVISIONING_MODEL, COST_USD),
    Event.QUEUE_STATS: (QUEUED, RUNNING, OLDEST_WAIT_S),
    Event.OUTBOX_STATS: (PENDING, OLDEST_PENDING_S),
}
"""The fields each event carries (a field that does not apply, e.g. `error_code` of a success, is
null or absent)."""
