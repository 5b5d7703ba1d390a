"""`dispatch`: admission control — expired leases, starting executions, the mirror's catch-up.

One pass:
1. Every PROCESSING request whose lease expired: if its workflow execution is still running the
   lease is renewed; otherwise it goes back to the queue at its old place (a script makes that
   happen exactly once, however many dispatches run at once), or FAILED after `MAX_ATTEMPTS`.
   When Workflows cannot say (unreachable), it is left PROCESSING until a later pass.
2. While fewer than `MAX_CONCURRENT_JOBS` requests hold a lease: take the next one (the take
   script checks the limit atomically), make sure its `request.json` is there, start a workflow
   execution (its argument: docs/contracts.md "Workflow execution argument"), and record the execution name, which renews the lease to
   `LEASE_SECONDS`. Until then the lease is short, so a dispatch that dies mid-way gives the
   request back within minutes. If the executor refuses, the request goes back at its place and
   the pass stops starting more.
3. The Firestore mirror copies whatever is pending in its outbox.
4. Durability and retention, with the mirror on: a live record Firestore holds and Redis does not
   (an accept Firestore confirmed when no Redis replica did, then lost in a failover) is put back
   QUEUED; finished records mirrored more than `RECORD_RETENTION_SECONDS` ago leave Redis
   (Firestore answers for them: functions.lifecycle.access).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from core import log_events as ev
from core import logs
from core.record import LIVE_STATES
from functions.context import Services
from functions.dispatch import batch_job, request_file
from functions.dispatch.executions import ACTIVE_STATES, Executor, ExecutorError
from functions.errors import UnavailableError
from functions.queue_store.store import IllegalTransitionError, RecordNotFoundError
from functions.status import events

log = logging.getLogger("splatpipe.dispatch")

START_LEASE_SECONDS = 300.0
OUTBOX_SAMPLE = 1000  # records read to find the oldest pending change (the outbox is a hash: unordered)


def _changed(svc: Services, request_id: str) -> None:
    if svc.mirror is not None:
        svc.mirror.after_change(request_id)


def requeue_expired(svc: Services, executor: Executor) -> list[str]:
    requeued: list[str] = []
    unknown: ExecutorError | None = None
    for request_id in svc.queue.expired_leases(limit=500):
        record = svc.queue.get(request_id)
        if record is not None and record.state == "PROCESSING" and record.execution:
            if unknown is not None:  # Workflows could not say for one: the rest wait for a later pass
                continue
            try:
                state = executor.state(record.execution)
            except ExecutorError as exc:  # unknown is not "stopped": re-queueing could run it twice
                log.warning("request %s: lease expired but the state of execution %s is unknown (%s); left "
                            "PROCESSING, as is every other expired lease with an execution this pass",
                            request_id, record.execution, exc)
                unknown = exc
                continue
            if state in ACTIVE_STATES and svc.queue.renew_expired(request_id, svc.settings.lease_seconds):
                log.info("request %s: lease expired but execution %s is %s; renewed", request_id,
                         record.execution, state)
                continue
        outcome = svc.queue.requeue_expired(request_id, svc.settings.max_attempts)
        if outcome == "requeued":
            requeued.append(request_id)
            log.warning("request %s: lease expired; re-queued", request_id)
        elif outcome == "failed":
            log.warning("request %s: lease expired %d times; FAILED", request_id, svc.settings.max_attempts)
            failed = svc.queue.get(request_id)
            if failed is not None:
                events.changed(record, failed)
        if outcome != "skip":
            _changed(svc, request_id)
    return requeued


def start_admitted(svc: Services, executor: Executor) -> list[str]:
    started: list[str] = []
    limit = svc.settings.max_concurrent_jobs
    if limit <= 0:  # MAX_CONCURRENT_JOBS=0 pauses starting
        return started
    while True:
        taken = svc.queue.take(min(START_LEASE_SECONDS, svc.settings.lease_seconds), max_running=limit)
        if taken is None:
            break
        request_id = taken.request_id
        record = svc.queue.get(request_id)
        if record is None:
            continue
        try:
            request_file.ensure_request_json(svc.settings, record)
            ws = svc.settings.workspace_uri(request_id)  # the argument: the request, its stages' Batch jobs
            execution = executor.start(record.execution_argument(ws, batch_job.stage_jobs(
                list(record.stages_requested), request_id, ws, record.options, record.priority,
                batch_job.BatchSettings.from_env(svc.settings))))
        except Exception as exc:
            log.error("request %s: could not start an execution (%s); back in the queue", request_id, exc)
            svc.queue.release(request_id, taken.version)
            _changed(svc, request_id)
            break
        try:
            svc.queue.update(request_id, {"execution": execution}, svc.settings.lease_seconds)
        except (RecordNotFoundError, IllegalTransitionError):
            # Cancelled between the take and now: the execution has nothing to do.
            try:
                executor.cancel(execution)
            except Exception as exc:
                log.warning("request %s: could not cancel execution %s (%s)", request_id, execution, exc)
        _changed(svc, request_id)
        started.append(request_id)
        log.info("request %s: started execution %s", request_id, execution)
    return started


def log_queue_stats(svc: Services) -> None:
    """queue.stats: what the queue holds now (core.log_events; Terraform's queue metrics)."""
    stats = svc.queue.stats()
    logs.emit(ev.Event.QUEUE_STATS, queued=stats["counts"].get("QUEUED", 0), running=stats["running"],
              oldest_wait_s=stats["oldest_wait_seconds"] or 0.0)


def log_outbox(svc: Services, pending: int) -> None:
    """mirror.outbox after the catch-up pass: how many versions wait for Firestore and for how
    long the oldest has (its record's last change: a record's pending version is its latest)."""
    oldest = 0.0
    if pending:
        records = svc.queue.get_many(svc.queue.outbox(OUTBOX_SAMPLE))
        changed = [r.updated_at for r in records.values() if r is not None]
        if changed:
            oldest = round(max(0.0, time.time() - min(changed) / 1000.0), 3)
    logs.emit(ev.Event.OUTBOX_STATS, pending=pending, oldest_pending_s=oldest)


def run(svc: Services, executor: Executor) -> dict[str, Any]:
    """One dispatch pass; its response body (docs/api.md "States and the queue service")."""
    requeued = requeue_expired(svc, executor)
    started = start_admitted(svc, executor)
    if svc.mirror is not None:
        mirrored = svc.mirror.reconcile()
        if mirrored["synced"] or mirrored["pending"]:
            log.info("mirror: %(synced)d synced, %(pending)d pending", mirrored)
        log_outbox(svc, mirrored["pending"])
        restore_lost(svc)
        evict_finished(svc)
    log_queue_stats(svc)
    return {"started": started, "requeued": requeued, "running": svc.queue.running(),
            "max": svc.settings.max_concurrent_jobs}


LIVE_SCAN_LIMIT = 1000  # live records read from Firestore per pass (the queue's depth is far below)


def restore_lost(svc: Services) -> list[str]:
    """Put back every live record Firestore holds and Redis lost (restore.lua: QUEUED in the
    queue, PROCESSING with an expired lease); the ids put back."""
    mirror = svc.mirror
    assert mirror is not None
    restored: list[str] = []
    try:
        live = [r.request_id for r in mirror.live(LIVE_SCAN_LIMIT)]
        for rid in svc.queue.missing(live):
            # Read again now that Redis is known not to hold it: another pass may have mirrored its
            # end and evicted it since the query (eviction waits for the mirror), and a finished
            # request must not come back to life.
            record = mirror.archived(rid)
            if record is not None and record.state in LIVE_STATES and svc.queue.restore(record):
                restored.append(rid)
                log.warning("request %s: Firestore holds it %s but Redis lost it; put back", rid, record.state)
                _changed(svc, rid)
    except UnavailableError:
        pass  # Firestore is down: a later pass looks again
    return restored


def evict_finished(svc: Services) -> list[str]:
    """Retention: finished records mirrored long enough ago leave Redis; the ids evicted."""
    keep = svc.settings.record_retention_seconds
    if keep <= 0:
        return []
    sec, usec = svc.queue.r.time()  # Redis's clock, as the scripts' `finished` scores
    now_ms = int(sec) * 1000 + int(usec) // 1000
    gone = svc.queue.evict_finished(now_ms - keep * 1000)
    if gone:
        log.info("retention: %d finished records left Redis (Firestore keeps them)", len(gone))
    return gone
