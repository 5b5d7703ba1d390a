"""What a caller does with a request after making it: cancel, restart, delete. HTTP lives in
functions.edge.task_api; everything here raises functions.errors kinds.

- cancel: QUEUED or PROCESSING -> CANCELLED; the workflow execution is cancelled and the current
  stage's Batch job deleted (functions.dispatch.batch_control).
- restart: a finished request (COMPLETED, FAILED, CANCELLED) runs again in the same workspace, the
  same id and callback token, optionally with changed options; a stage whose `_SUCCESS.json`
  still matches is skipped, `from_stage` removes that stage's and the later stages' markers so
  they run again.
- delete: the workspace (every output with it) is removed; the record stays as a DELETED
  tombstone so the id keeps answering.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from core import gcs, workspace
from core import record as jobrecord
from core.options import OptionsError, normalize_options
from core.record import Record
from functions.context import Services
from functions.dispatch import batch_control, request_file
from functions.errors import ConflictError, InvalidRequestError, NotFoundError
from functions.lifecycle import access
from functions.queue_store.store import IllegalTransitionError, RecordNotFoundError
from functions.status import events

log = logging.getLogger("splatpipe.lifecycle")

ACTIVE_STATES = jobrecord.LIVE_STATES


@contextlib.contextmanager
def _refused_by_queue() -> Iterator[None]:
    """The queue's refusals of a transition, as the caller sees them."""
    try:
        yield
    except IllegalTransitionError as exc:
        raise ConflictError(str(exc)) from None
    except RecordNotFoundError:
        raise NotFoundError("no such request") from None


def _changed(svc: Services, request_id: str) -> None:
    if svc.mirror is not None:
        svc.mirror.after_change(request_id)


# --- cancel ----------------------------------------------------------------------------------------


def running_batch_jobs(record: Record) -> list[str]:
    return [st["batch_job"] for st in record.stages.values()
            if st.get("state") == jobrecord.StageState.RUNNING.value and st.get("batch_job")]


def cancel(svc: Services, record: Record) -> Record:
    """QUEUED/PROCESSING -> CANCELLED, then stop its execution and running Batch job."""
    rid = record.request_id
    if record.state not in ACTIVE_STATES:
        raise ConflictError(f"request is {record.state}; only a QUEUED or PROCESSING request can be cancelled")
    with _refused_by_queue():  # it finished meanwhile
        updated = svc.queue.update(rid, {"state": jobrecord.State.CANCELLED.value}, svc.settings.lease_seconds)
    _changed(svc, rid)
    events.changed(record, updated)
    # The record is CANCELLED first: the workflow's next status update is refused and it stops,
    # whatever happens to the calls below.
    if updated.execution:
        try:
            svc.executor().cancel(updated.execution)
        except Exception as exc:
            log.warning("request %s: cannot cancel execution %s: %s", rid, updated.execution, exc)
    for job in running_batch_jobs(updated):
        batch_control.delete_job(svc.settings, job)
    return updated


# --- restart ---------------------------------------------------------------------------------------


def restart(svc: Services, record: Record, from_stage: str | None = None,
            options: Mapping[str, Any] | None = None) -> Record:
    """Run a finished request again in its workspace (see the module docstring)."""
    rid = record.request_id
    record = access.held(svc, record)
    if record.state not in {s.value for s in jobrecord.RESTARTABLE_STATES}:
        hint = "its workspace is gone" if record.state == jobrecord.State.DELETED.value \
            else "cancel it or wait for it to finish"
        raise ConflictError(f"request is {record.state}; {hint}")
    requested = list(record.stages_requested)
    if from_stage is not None and from_stage not in requested:
        raise InvalidRequestError(f"from_stage must be one of the request's stages: {', '.join(requested)}",
                                  "invalid_stage")
    merged = {**record.options, **dict(options or {})}
    try:
        new_options = normalize_options(merged)
    except OptionsError as exc:
        raise InvalidRequestError(str(exc), "invalid_options") from None
    if from_stage is not None:
        ws_bucket, ws_prefix = gcs.split_uri(svc.settings.workspace_uri(rid))
        bucket = gcs.client(svc.settings.project).bucket(ws_bucket)
        for s in requested[requested.index(from_stage):]:
            blob = bucket.blob(f"{ws_prefix}/{s}/{workspace.SUCCESS_FILE}")
            try:
                blob.delete(timeout=gcs.TIMEOUT_SECONDS)
            except Exception as exc:  # absent (never ran, or failed): nothing to force
                if getattr(exc, "code", None) != 404:
                    raise
    # request.json and the mirror first: the stages read their options from request.json once
    # dispatch starts the run, and its progress must not start from the last run's.
    request_file.write_request_json(svc.settings, replace(record, options=new_options))
    if svc.mirror is not None:
        svc.mirror.clear_stage_fields(rid)
    with _refused_by_queue():
        svc.queue.restart(rid, record.version, new_options)
        # Read at once, before the mirror's write and the poke: the answer is the state the
        # restart made (QUEUED), not what a dispatch (the poke's, or the scheduler's tick during
        # the mirror's write) has made of it meanwhile.
        fresh = svc.queue.get(rid)
    assert fresh is not None  # retention evicts only finished records
    _changed(svc, rid)
    svc.kick()
    return fresh


# --- delete ----------------------------------------------------------------------------------------


def delete(svc: Services, record: Record) -> Record:
    """Cancel if still active, make the record a DELETED tombstone, remove the workspace."""
    rid = record.request_id
    record = access.held(svc, record)
    if record.state in ACTIVE_STATES:
        with contextlib.suppress(ConflictError):  # finished meanwhile: delete it as it is
            cancel(svc, record)
    with _refused_by_queue():  # restarted meanwhile
        svc.queue.tombstone(rid)
    _changed(svc, rid)
    ws_bucket, ws_prefix = gcs.split_uri(svc.settings.workspace_uri(rid))
    client = gcs.client(svc.settings.project)
    removed = 0
    for blob in client.list_blobs(ws_bucket, prefix=ws_prefix + "/", timeout=gcs.TIMEOUT_SECONDS):
        try:
            blob.delete(timeout=gcs.TIMEOUT_SECONDS)
            removed += 1
        except Exception as exc:
            if getattr(exc, "code", None) != 404:
                raise
    log.info("request %s: deleted (%d objects removed)", rid, removed)
    return access.held(svc, record)
