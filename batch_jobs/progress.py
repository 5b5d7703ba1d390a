"""Stage progress to the status store: the Firestore document when configured, a log line always.

A background heartbeat re-sends the latest fraction every few seconds, so long calls into
native code (a pycolmap mapper, say) still show the stage alive.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from typing import Any, Protocol

from core import gcs
from core import record as jobrecord

log = logging.getLogger("batch_jobs.progress")

HEARTBEAT_SECONDS = 3.0


class ProgressSink(Protocol):
    def write(self, fields: dict[str, Any]) -> None: ...


class LogSink:
    """One log line per report (a JSON line in a Batch task: core.logs)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def write(self, fields: dict[str, Any]) -> None:
        frac = fields.get(jobrecord.progress_path(self.stage))
        msg = fields.get(jobrecord.stage_path(self.stage, "message"), "")
        if frac is not None:
            log.info("[%s] %5.1f%% %s", self.stage, 100 * float(frac), msg)
        elif "error" in fields:
            log.error("[%s] error: %s", self.stage, fields["error"])


class FirestoreSink:
    """Field-path updates of `reconstructions/{request_id}` (merge; never clobbers the document)."""

    def __init__(self, request_id: str, project: str | None = None) -> None:
        self._doc = gcs.firestore_client(project).collection(jobrecord.COLLECTION).document(request_id)

    def write(self, fields: dict[str, Any]) -> None:
        from google.cloud.firestore_v1.field_path import FieldPath

        # set(merge=True) creates the document if the mirror has not yet; dotted keys are paths.
        parts = ((FieldPath.from_string(path).parts, value) for path, value in fields.items())
        self._doc.set(jobrecord.nested(parts), merge=True)


def firestore_configured() -> bool:
    """Firestore is the status store when the emulator is set or we run on Google Cloud."""
    if os.environ.get("SPLATPIPE_STATUS_STORE", "").lower() == "log":
        return False
    return bool(os.environ.get("FIRESTORE_EMULATOR_HOST") or os.environ.get("BATCH_JOB_ID")
                or os.environ.get("SPLATPIPE_STATUS_STORE", "").lower() == "firestore")


def default_sinks(stage: str, request_id: str | None) -> list[ProgressSink]:
    sinks: list[ProgressSink] = [LogSink(stage)]
    if request_id and firestore_configured():
        try:
            sinks.append(FirestoreSink(request_id))
        except Exception as exc:  # the status store is best effort; the stage's work is not
            log.warning("progress: Firestore unavailable (%s); logging only", exc)
    return sinks


class ProgressReporter:
    """`update(fraction, message)` from the stage; writes are throttled and heart-beaten."""

    def __init__(self, stage: str, sinks: list[ProgressSink], min_interval: float = 1.0,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.stage = stage
        self.sinks = sinks
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self.fraction = 0.0
        self.message = ""
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressReporter:
        self.update(0.0, "started", force=True)
        self._thread = threading.Thread(target=self._beat, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def update(self, fraction: float, message: str = "", *, force: bool = False) -> None:
        with self._lock:
            self.fraction = min(1.0, max(0.0, float(fraction)))
            if message:
                self.message = message
            due = force or time.monotonic() - self._last_write >= self.min_interval
        if due:
            self._flush()

    def note(self, key: str, value: Any) -> None:
        """Write one attribute of the stage now (`stages.{stage}.{key}`), e.g. when a live preview
        was written; like every progress write, a failure never fails the stage."""
        self._write({jobrecord.stage_path(self.stage, key): value})

    def fail(self, error: dict[str, Any]) -> None:
        self._write({
            "error": {k: error[k] for k in ("code", "message", "stage")},
            jobrecord.stage_path(self.stage, "message"): error["message"],
        })

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if time.monotonic() - self._last_write >= self.heartbeat:
                self._flush()

    def _flush(self) -> None:
        with self._lock:
            fields = {
                jobrecord.progress_path(self.stage): round(self.fraction, 4),
                jobrecord.stage_path(self.stage, "message"): self.message,
                jobrecord.stage_path(self.stage, "heartbeat_at"): dt.datetime.now(dt.UTC).isoformat(),
            }
            self._last_write = time.monotonic()
        self._write(fields)

    def _write(self, fields: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.write(fields)
            except Exception as exc:  # never let the status store fail the stage
                log.warning("progress sink %s failed: %s", type(sink).__name__, exc)
