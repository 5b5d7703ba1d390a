"""The Firestore mirror of the records: `reconstructions/{id}` (docs/contracts.md "Firestore document").

Redis is the source of truth; Firestore is a copy that clients and dashboards read. Every queue
script that changes a record also writes `outbox[id] = version` in Redis, in the same atomic
step, and an entry leaves the outbox only once that version (or a newer one) is in Firestore.
So the mirror never has to be written on a request's path:

- A new request is mirrored by `dispatch`'s catch-up pass (:meth:`StatusMirror.reconcile`): the
  api's poke runs dispatch right after an accept, and Cloud Scheduler runs it every minute.
- The queue function's updates (the workflow's `PUT /status`) try one quick copy in the request
  (:meth:`StatusMirror.after_change`), so a dashboard sees a stage start at once.

Every Firestore call has a short deadline and no library retries, and all of them sit behind one
circuit breaker: after a failure the mirror is *open* for `breaker_seconds` (no call is made; the
changes stay in the outbox), then one call may probe it (*half-open*); a success closes it. An
outage therefore costs one deadline per breaker period in one caller, never a wait per request.
The catch-up pass is bounded too: at most `limit` records and `budget` seconds per pass.

Writes never go backwards: each document carries `mirror_version`, and a write happens only over
a document with an older one (an `update_time` precondition makes the check-and-write atomic).
Only the control plane's fields are written; a running stage's `progress.{s}`,
`stages.{s}.message` / `heartbeat_at` and its `error` are left alone (field-path updates).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from core import record as jobrecord
from core.gcs import firestore_client
from functions.errors import UnavailableError
from functions.queue_store.store import RequestQueue

log = logging.getLogger("splatpipe.mirror")
T = TypeVar("T")

MIRROR_VERSION = "mirror_version"  # the field of the record version a document holds
TIMEOUT_SECONDS = 1.0  # the deadline of every Firestore call (reads for the status overlay, writes)
BREAKER_SECONDS = 15.0
RECONCILE_BUDGET_SECONDS = 3.0
SYNC_CHUNK = 100  # records per batched write of the catch-up pass (Firestore takes up to 500)


def _flat(pairs: Iterable[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
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
        self._probing = False

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
            self._probing = False
        log.warning("Firestore mirror unavailable (%s: %s); changes stay in the outbox",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")

    def _succeeded(self) -> None:
        with self._lock:
            self._down_until = 0.0
            self._probing = False

    def _admit(self) -> bool:
        """May a call go to Firestore now? Closed: yes. Open: no. Half-open: one caller probes."""
        with self._lock:
            if self._down_until == 0.0:
                return True
            if time.monotonic() < self._down_until or self._probing:
                return False
            self._probing = True
            return True

    # --- writing --------------------------------------------------------------------------------

    def _ref(self, request_id: str) -> Any:
        return self._firestore().collection(jobrecord.COLLECTION).document(request_id)

    @staticmethod
    def _fields(record: jobrecord.Record) -> list[tuple[tuple[str, ...], Any]]:
        return [*record.firestore_fields(), ((MIRROR_VERSION,), record.version)]

    @staticmethod
    def _holds(snap: Any, version: int) -> bool:
        """The document already holds `version` or a newer one (writes never go back)."""
        have = (snap.to_dict() or {}).get(MIRROR_VERSION)
        return isinstance(have, int) and have >= version

    def _forget(self, request_id: str) -> None:
        """A record that is gone has nothing left to mirror: its outbox entry goes."""
        self.queue.r.hdel(self.queue.k_outbox, request_id)

    def sync(self, request_id: str, *, require: bool = False) -> bool:
        """Copy the record's current version to Firestore; True when it is (or already was) there.
        A record Redis does not hold has nothing to copy: True, unless `require` (False then: an
        accept must not be confirmed by a copy of nothing).

        Raises the client's error when Firestore cannot be reached.
        """
        from google.api_core import exceptions as gexc

        record = self.queue.get(request_id)
        if record is None:
            self._forget(request_id)
            return not require
        version = record.version
        fields = self._fields(record)
        client = self._firestore()
        ref = self._ref(request_id)
        for _ in range(4):  # a stage writing progress in between changes update_time: try again
            snap = ref.get(field_paths=[MIRROR_VERSION], retry=None, timeout=self.timeout)
            if snap.exists:
                if self._holds(snap, version):
                    break
                try:
                    ref.update(_flat(fields), option=client.write_option(
                        last_update_time=snap.update_time), retry=None, timeout=self.timeout)
                    break
                except gexc.FailedPrecondition:
                    continue
            else:
                try:
                    ref.create(jobrecord.nested(fields), retry=None, timeout=self.timeout)
                    break
                except gexc.Conflict:
                    continue
        else:
            return False
        self.queue.outbox_ack(request_id, version)
        return True

    def _guarded(self, work: Callable[[], T]) -> T | None:
        """`work()` behind the breaker: its result, or None when the breaker refused or it failed."""
        if not self._admit():
            return None
        try:
            done = work()
        except Exception as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return done

    def after_change(self, request_id: str) -> None:
        """The in-request attempt: never raises, never waits on a Firestore known to be down."""
        self._guarded(lambda: self.sync(request_id))

    def sync_many(self, request_ids: list[str]) -> int:
        """sync() for several records in two Firestore calls (one read of their versions, one
        batched write), so the catch-up pass after a burst of triggers costs little; the number
        mirrored. A write that lost a race (a stage wrote in between, a concurrent create) fails
        the whole batch, and then each record is synced on its own.

        Raises the client's error when Firestore cannot be reached.
        """
        from google.api_core import exceptions as gexc

        records = self.queue.get_many(request_ids)
        for rid in [rid for rid, rec in records.items() if rec is None]:
            self._forget(rid)
        live = {rid: rec for rid, rec in records.items() if rec is not None}
        if not live:
            return len(records)
        client = self._firestore()
        snaps = {snap.id: snap for snap in client.get_all([self._ref(rid) for rid in live],
                                                          field_paths=[MIRROR_VERSION], retry=None,
                                                          timeout=self.timeout)}
        batch = client.batch()
        for rid, rec in live.items():
            snap = snaps.get(rid)
            fields = self._fields(rec)
            if snap is None or not snap.exists:
                batch.create(self._ref(rid), jobrecord.nested(fields))
                continue
            if not self._holds(snap, rec.version):
                batch.update(self._ref(rid), _flat(fields),
                             option=client.write_option(last_update_time=snap.update_time))
        try:
            if len(batch) > 0:
                batch.commit(retry=None, timeout=self.timeout)
        except (gexc.FailedPrecondition, gexc.Conflict, gexc.AlreadyExists):
            return len(records) - len(live) + sum(self.sync(rid) for rid in live)
        for rid, rec in live.items():
            self.queue.outbox_ack(rid, rec.version)
        return len(records)

    def reconcile(self, limit: int = 500, budget: float = RECONCILE_BUDGET_SECONDS,
                  chunk: int = SYNC_CHUNK) -> dict[str, int]:
        """Copy what is pending in the outbox (dispatch's catch-up pass): at most `limit` records and
        `budget` seconds, `chunk` records a batch; nothing while the breaker is open."""
        synced = 0
        pending = list(self.queue.outbox(limit))
        deadline = time.monotonic() + budget
        for i in range(0, len(pending), max(1, chunk)):
            if time.monotonic() > deadline:
                break
            done = self._guarded(functools.partial(self.sync_many, pending[i:i + chunk]))
            if done is None:
                break
            synced += done
        left = int(self.queue.r.hlen(self.queue.k_outbox))
        return {"synced": synced, "pending": left}

    # --- reading --------------------------------------------------------------------------------

    def stage_fields(self, request_id: str) -> dict[str, Any] | None:
        """What the running stages wrote (`progress`, `stages`), or None (no document, Firestore down)."""
        if not self._admit():
            return None
        try:
            snap = self._firestore().collection(jobrecord.COLLECTION).document(request_id).get(
                field_paths=list(jobrecord.STAGE_FIELDS), retry=None,
                timeout=self.timeout)
        except Exception as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return snap.to_dict() if snap.exists else None

    def clear_stage_fields(self, request_id: str) -> None:
        """Forget what the last run's stages wrote (`progress`, `stages`) before the request runs
        again, so the new run's status starts from nothing. Never raises (a document the mirror
        has not written yet has nothing to forget)."""
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        if not self._admit():
            return
        try:
            self._firestore().collection(jobrecord.COLLECTION).document(request_id).update(
                dict.fromkeys(jobrecord.STAGE_FIELDS, firestore.DELETE_FIELD),
                retry=None, timeout=self.timeout)
        except gexc.NotFound:
            pass
        except Exception as exc:
            self._failed(exc)
            return
        self._succeeded()

    # --- the archive: records Redis no longer holds ---------------------------------------------

    def _archive_read(self, work: Callable[[Any], T]) -> T:
        """A read of the archive; UnavailableError when Firestore cannot answer (the breaker is
        open, or the call fails): "no such request" would be a wrong answer then."""
        if not self._admit():
            raise UnavailableError("request records are unavailable; try again shortly", retry_after=15)
        try:
            out = work(self._firestore().collection(jobrecord.COLLECTION))
        except Exception as exc:
            self._failed(exc)
            raise UnavailableError("request records are unavailable; try again shortly", retry_after=15) from exc
        self._succeeded()
        return out

    @staticmethod
    def _record(snap: Any) -> jobrecord.Record | None:
        d = snap.to_dict() if snap.exists else None
        if not d or "callback_token_sha256" not in d:  # a stage's progress write before the mirror's first
            return None
        return jobrecord.Record.from_firestore(snap.id, d, int(d.get(MIRROR_VERSION) or 0))

    def archived(self, request_id: str) -> jobrecord.Record | None:
        """The record Firestore holds for `request_id`, or None."""
        return self._archive_read(lambda col: self._record(col.document(request_id).get(
            retry=None, timeout=self.timeout)))

    def _where(self, field: str, op: str, value: Any, limit: int) -> list[jobrecord.Record]:
        """The records of a query on one field (at most `limit`, any order)."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        return self._archive_read(lambda col: [r for r in map(self._record, col.where(
            filter=FieldFilter(field, op, value)).limit(limit).get(retry=None, timeout=self.timeout)) if r is not None])

    def archived_by_token(self, token_sha256: str) -> jobrecord.Record | None:
        """The record whose callback token has this digest, or None."""
        return next(iter(self._where("callback_token_sha256", "==", token_sha256, 1)), None)

    def archived_session(self, session_id: str, limit: int) -> list[jobrecord.Record]:
        """The session's records Firestore holds (at most `limit`; any order)."""
        return self._where("session_id", "==", session_id, limit)

    def live(self, limit: int) -> list[jobrecord.Record]:
        """Records Firestore holds as QUEUED or PROCESSING (at most `limit`)."""
        return self._where("state", "in", sorted(s.value for s in jobrecord.LIVE_STATES), limit)
