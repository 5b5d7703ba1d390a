"""The Firestore mirror of the records: `reconstructions/{id}` (DESIGN "Firestore").

Redis is the source of truth; Firestore is a copy that clients and dashboards read. Every queue
script that changes a record also writes `outbox[id] = version` in Redis, in the same atomic
step. After a change the function tries to copy the record to Firestore (one quick attempt, no
library retries, a short timeout); on success the outbox entry is cleared — only if no newer
version arrived meanwhile. When Firestore is down the attempt fails fast, the transition has
already succeeded, and the entry stays: `dispatch` (every minute, from Cloud Scheduler) runs
:meth:`StatusMirror.reconcile`, which copies whatever is pending. After a failure a circuit
breaker skips the in-request attempts for a while, so an outage adds no latency to requests.

Writes never go backwards: each document carries `mirror_version`, and a write happens only over
a document with an older one (an `update_time` precondition makes the check-and-write atomic).
Only the control plane's fields are written; a running stage's `progress.{s}`,
`stages.{s}.message` / `heartbeat_at` and its `error` are left alone (field-path updates), except
that a COMPLETED request's `error` is cleared.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from functions import jobrecord
from functions.request_queue import RequestQueue, decode_record

log = logging.getLogger("splatpipe.mirror")

FIELD_MIRROR_VERSION = jobrecord.FIELD_MIRROR_VERSION
TIMEOUT_SECONDS = 5.0
BREAKER_SECONDS = 15.0


def firestore_client(project: str) -> Any:
    from google.cloud import firestore

    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return firestore.Client(project=project, credentials=AnonymousCredentials())
    return firestore.Client(project=project)


def _ts(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)


def document_fields(record: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(field path parts, value) for every control-plane field of a decoded record."""
    yield (jobrecord.FIELD_STATE,), record["state"]
    yield (jobrecord.FIELD_PRIORITY,), record["priority"]
    yield (jobrecord.FIELD_SESSION_ID,), record["session_id"]
    yield (jobrecord.FIELD_INPUT,), record["input"]
    yield (jobrecord.FIELD_OPTIONS,), dict(record["options"])
    yield (jobrecord.FIELD_STAGES_REQUESTED,), list(record["stages_requested"])
    yield (jobrecord.FIELD_CREATED_AT,), _ts(record["created_at"])
    yield (jobrecord.FIELD_UPDATED_AT,), _ts(record["updated_at"])
    yield (jobrecord.FIELD_STAGE,), record["stage"]
    yield (jobrecord.FIELD_CALLBACK_TOKEN_SHA256,), record["callback_token_sha256"]
    yield (jobrecord.FIELD_EXECUTION,), record["execution"]
    yield (jobrecord.FIELD_ATTEMPTS,), record["attempts"]
    for stage, st in record["stages"].items():
        for key in ("state", "batch_job"):
            if key in st:
                yield (jobrecord.FIELD_STAGES, stage, key), st[key]
        for key in ("started_at", "finished_at"):
            yield (jobrecord.FIELD_STAGES, stage, key), _ts(st.get(key))
    for stage, frac in record["progress"].items():
        yield (jobrecord.FIELD_PROGRESS, stage), float(frac)
    for name, uri in record["outputs"].items():
        yield (jobrecord.FIELD_OUTPUTS, name), uri
    if record["error"]:
        yield (jobrecord.FIELD_ERROR,), dict(record["error"])
    elif record["state"] == jobrecord.State.COMPLETED:
        # A best-effort stage that failed wrote its error here; the completed request has none
        # (that failure is one of its warnings).
        yield (jobrecord.FIELD_ERROR,), None
    yield (jobrecord.FIELD_WARNINGS,), [dict(w) for w in record["warnings"]]
    yield (jobrecord.FIELD_METRICS,), {stage: dict(m) for stage, m in record["metrics"].items()}
    yield (FIELD_MIRROR_VERSION,), record["version"]


def _flat(pairs: Iterator[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    from google.cloud.firestore_v1.field_path import FieldPath

    return {FieldPath(*parts).to_api_repr(): value for parts, value in pairs}


class StatusMirror:
    """Copies records from the queue to Firestore; see the module docstring."""

    def __init__(self, queue: RequestQueue, project: str, *, timeout: float = TIMEOUT_SECONDS,
                 breaker_seconds: float = BREAKER_SECONDS) -> None:
        self.queue = queue
        self.project = project
        self.timeout = timeout
        self.breaker_seconds = breaker_seconds
        self._client: Any = None
        self._client_env: str | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    # --- plumbing -------------------------------------------------------------------------------

    def _firestore(self) -> Any:
        env = os.environ.get("FIRESTORE_EMULATOR_HOST", "")
        with self._lock:
            if self._client is None or self._client_env != env:
                self._client = firestore_client(self.project)
                self._client_env = env
            return self._client

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.breaker_seconds
        log.warning("Firestore mirror unavailable (%s: %s); changes stay in the outbox",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")

    @property
    def available(self) -> bool:
        """False while the circuit breaker is open after a failure."""
        return time.monotonic() >= self._down_until

    # --- writing --------------------------------------------------------------------------------

    def sync(self, request_id: str) -> bool:
        """Copy the record's current version to Firestore; True when it is (or already was) there.

        Raises the client's error when Firestore cannot be reached.
        """
        from google.api_core import exceptions as gexc

        raw = self.queue.get_raw(request_id)
        if raw is None:  # nothing to mirror any more
            self.queue.r.hdel(self.queue.k_outbox, request_id)
            return True
        record = decode_record(raw)
        version = record["version"]
        client = self._firestore()
        ref = client.collection(jobrecord.COLLECTION).document(request_id)
        for _ in range(4):  # a stage writing progress in between changes update_time: try again
            snap = ref.get(field_paths=[FIELD_MIRROR_VERSION], retry=None, timeout=self.timeout)
            if snap.exists:
                have = (snap.to_dict() or {}).get(FIELD_MIRROR_VERSION)
                if isinstance(have, int) and have >= version:
                    break
                try:
                    ref.update(_flat(document_fields(record)), option=client.write_option(
                        last_update_time=snap.update_time), retry=None, timeout=self.timeout)
                    break
                except gexc.FailedPrecondition:
                    continue
            else:
                try:
                    ref.create(jobrecord.nested(document_fields(record)), retry=None, timeout=self.timeout)
                    break
                except gexc.Conflict:
                    continue
        else:
            return False
        self.queue.outbox_ack(request_id, version)
        return True

    def after_change(self, request_id: str) -> None:
        """The in-request attempt: never raises, never waits on a Firestore known to be down."""
        if not self.available:
            return
        try:
            self.sync(request_id)
        except Exception as exc:
            self._failed(exc)

    def reconcile(self, limit: int = 500) -> dict[str, int]:
        """Copy everything pending in the outbox (dispatch's catch-up pass)."""
        synced = failed = 0
        pending = self.queue.outbox(limit)
        for request_id in pending:
            try:
                if self.sync(request_id):
                    synced += 1
                else:
                    failed += 1
            except Exception as exc:
                self._failed(exc)
                failed = len(pending) - synced
                break
        if synced and not failed:
            self._down_until = 0.0
        return {"synced": synced, "pending": failed}

    # --- reading --------------------------------------------------------------------------------

    def stage_fields(self, request_id: str) -> dict[str, Any] | None:
        """What the running stages wrote (`progress`, `stages`), or None (no document, Firestore down)."""
        if not self.available:
            return None
        try:
            snap = self._firestore().collection(jobrecord.COLLECTION).document(request_id).get(
                field_paths=[jobrecord.FIELD_PROGRESS, jobrecord.FIELD_STAGES], retry=None, timeout=self.timeout)
        except Exception as exc:
            self._failed(exc)
            return None
        return snap.to_dict() if snap.exists else None

    def clear_stage_fields(self, request_id: str) -> None:
        """Forget what the last run's stages wrote (`progress`, `stages`) before the request runs
        again, so the new run's status starts from nothing. Never raises (a document the mirror
        has not written yet has nothing to forget)."""
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        try:
            self._firestore().collection(jobrecord.COLLECTION).document(request_id).update(
                {jobrecord.FIELD_PROGRESS: firestore.DELETE_FIELD, jobrecord.FIELD_STAGES: firestore.DELETE_FIELD},
                retry=None, timeout=self.timeout)
        except gexc.NotFound:
            pass
        except Exception as exc:
            self._failed(exc)
