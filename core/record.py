"""The job record: states, legal transitions, stages, and `Record`, a request's record and its views.

This module is the one definition of a request's record shared by the control plane
(`functions`) and the data plane (`batch_jobs` imports it; nothing here imports heavy code).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core.stages import ORDER

COLLECTION = "reconstructions"
"""Firestore collection; one document per request id."""


class State(enum.StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DELETED = "DELETED"  # outputs and workspace removed; the record stays so the id still answers


TERMINAL_STATES: frozenset[State] = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.DELETED})
LIVE_STATES: frozenset[State] = frozenset(State) - TERMINAL_STATES
"""QUEUED and PROCESSING: a request not finished yet."""

# A finished request may run again (`POST /requests/{id}/restart`, the same workspace) or be deleted
# (`DELETE /requests/{id}`); neither goes through `PUT /status/{id}`.
RESTARTABLE_STATES: frozenset[State] = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})

# Transitions a caller may ask for through `PUT /status/{id}`.
LEGAL_TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.PROCESSING, State.CANCELLED}),
    State.PROCESSING: frozenset({State.COMPLETED, State.FAILED, State.CANCELLED}),
    State.COMPLETED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
    State.DELETED: frozenset(),
}

# Besides these, `dispatch` alone puts a request whose lease expired back from PROCESSING to
# QUEUED (never through the HTTP API; functions/queue_store/store.py).

_NO_STAGE_ERROR_STATES = frozenset({State.COMPLETED, State.DELETED, State.QUEUED})
"""States in which no stage is running, so the record's `error` (or none) is the Firestore copy's."""

STAGES: tuple[str, ...] = ORDER
"""The pipeline's stages, in order (the stage registry, core.stages)."""


class StageState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    SKIPPED = "SKIPPED"  # a rerun found a matching _SUCCESS.json
    FAILED = "FAILED"


PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
"""0 is the highest priority."""

# What a running stage writes to the Firestore document itself (batch_jobs.progress): `progress.{s}`,
# `stages.{s}.message` and the keys below (and `error` on failure), by dotted paths, so it and
# the control plane's mirror (`Record.firestore_fields`) never clobber each other's parts.
STAGE_FIELDS = ("progress", "stages")
STAGE_HEARTBEAT_KEY = "heartbeat_at"
STAGE_LIVE_PREVIEW_KEY = "live_preview_at"  # when the stage last rewrote workspace.LIVE_PREVIEW
STAGE_LATEST_SPLAT_KEY = "latest_splat_at"  # when the stage last rewrote workspace.LATEST_SPLAT
STAGE_LATEST_SPLAT_STEP_KEY = "latest_splat_step"  # the training step that snapshot holds
STAGE_MACHINE_KEY = "machine"  # what the stage's Batch job ran on: core.pricing.Machine's JSON (queue-written)
_STAGE_WRITTEN_KEYS = frozenset({"message", STAGE_HEARTBEAT_KEY, STAGE_LIVE_PREVIEW_KEY, STAGE_LATEST_SPLAT_KEY,
                                 STAGE_LATEST_SPLAT_STEP_KEY})
"""What a running stage writes into `stages.{s}` itself: not the record's (the mirror's) part."""
LATEST_SPLAT_OUTPUT = "splat_latest"
"""The status's name of the training's latest snapshot (`outputs.splat_latest`, functions.status.view):
shown while the splat stage has noted one; not a record output (no manifest, zip or webhook)."""


# Bounds on what a record keeps of `warnings` and `metrics` (the record stays small: it is read
# on every status call and copied to Firestore on every change).
MAX_WARNINGS = 32  # per request; one per (stage, code)
MAX_METRICS_PER_STAGE = 32
MAX_METRIC_KEY = 64  # characters
MAX_METRIC_TEXT = 256  # characters of a string value
_METRIC_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def scalar_metrics(values: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """What a record keeps of a stage's metrics: finite numbers, bools and short strings under
    identifier keys (`[A-Za-z0-9_]`, at most MAX_METRIC_KEY), the first MAX_METRICS_PER_STAGE of
    them; anything else (lists, maps, nulls, NaN) is dropped, not refused, so a stage's new
    figure never fails its status update."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        if len(out) >= MAX_METRICS_PER_STAGE:
            break
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METRIC_KEY or not set(key) <= _METRIC_KEY_CHARS:
            continue
        if _keepable(value):
            out[key] = value
    return out


def _keepable(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 10**14  # Redis's Lua cjson keeps 14 significant digits
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_METRIC_TEXT


def progress_path(stage: str) -> str:
    """Firestore field path of a stage's progress fraction (0..1)."""
    return f"progress.{stage}"


def stage_path(stage: str, key: str) -> str:
    """Firestore field path of one attribute of a stage (`state`, `started_at`, `message`, …)."""
    return f"stages.{stage}.{key}"


def nested(fields: Iterable[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """`((parts of a field path), value)` pairs as one nested map, for a create or a merge-set."""
    out: dict[str, Any] = {}
    for parts, value in fields:
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def _ms(t: dt.datetime | None) -> int | None:
    """A Firestore timestamp as ms since the epoch (`_ts`'s inverse)."""
    return None if t is None else round(t.timestamp() * 1000)


def _ts(ms: int | float | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(float(ms) / 1000.0, tz=dt.UTC)


def iso(ms: int | float | None) -> str | None:
    """Milliseconds since the epoch as RFC 3339 UTC text, as the status document shows times."""
    t = _ts(ms)
    return None if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Record:
    """A request's record, as the queue holds it (the `req:{id}` hash of functions/queue_store/store.py;
    times in ms since the epoch), and each view of it the functions hand out."""

    request_id: str
    state: str
    priority: int
    session_id: str
    input: str
    options: dict[str, Any]
    stages_requested: tuple[str, ...]
    callback_token_sha256: str
    source: str  # who submitted it: "api", "upload", …
    webhook_url: str | None
    created_at: int
    updated_at: int
    stage: str | None  # the stage the last update named
    stages: dict[str, dict[str, Any]]  # {stage: {state, started_at, finished_at, batch_job, machine}}
    progress: dict[str, float]
    outputs: dict[str, str]  # {name: gs:// URI}
    error: dict[str, Any] | None  # {code, message, stage}
    warnings: tuple[dict[str, Any], ...]  # {code, message, stage}: what went wrong without failing it
    metrics: dict[str, dict[str, Any]]  # {stage: {key: scalar}}: each stage's headline figures
    seq: int  # arrival sequence: FIFO within a priority
    version: int  # bumped by every change (the Firestore mirror's order)
    attempts: int  # how many times the request was handed out
    lease_expires_at: int | None
    execution: str | None  # the current Workflows execution's name

    @classmethod
    def from_redis(cls, h: Mapping[str, str]) -> Record:
        """The record of its Redis hash: `doc` is the JSON of what never changes, the rest scalars
        and JSON text; a field not set yet is absent (or empty)."""
        doc = json.loads(h["doc"])
        return cls(
            request_id=h["request_id"], state=h["state"], priority=int(h["priority"]),
            session_id=doc["session_id"], input=doc["input"], options=doc["options"],
            stages_requested=tuple(doc["stages_requested"]), callback_token_sha256=doc["token_sha256"],
            source=doc["source"], webhook_url=doc.get("webhook_url"),
            created_at=int(h["created_at"]), updated_at=int(h["updated_at"]), stage=h.get("stage") or None,
            stages=json.loads(h.get("stages") or "{}"), progress=json.loads(h.get("progress") or "{}"),
            outputs=json.loads(h.get("outputs") or "{}"),
            error=json.loads(h["error"]) if h.get("error") else None,
            warnings=tuple(json.loads(h.get("warnings") or "[]")), metrics=json.loads(h.get("metrics") or "{}"),
            seq=int(h.get("seq", 0)), version=int(h.get("version", 0)), attempts=int(h.get("attempts", 0)),
            lease_expires_at=int(h["lease_expires_at"]) if h.get("lease_expires_at") else None,
            execution=h.get("execution") or None)

    def redis_fields(self) -> dict[str, str]:
        """The hash `from_redis` reads, less the queue's own bookkeeping (state, seq, version,
        updated_at, lease: the restore script's): what a record put back into Redis holds."""
        doc: dict[str, Any] = {"session_id": self.session_id, "input": self.input, "options": dict(self.options),
                               "stages_requested": list(self.stages_requested),
                               "token_sha256": self.callback_token_sha256, "source": self.source}
        if self.webhook_url:
            doc["webhook_url"] = self.webhook_url
        out = {"doc": json.dumps(doc, separators=(",", ":")), "priority": str(self.priority),
               "created_at": str(self.created_at), "attempts": str(self.attempts)}
        for key, value in (("stages", self.stages), ("progress", self.progress), ("outputs", self.outputs),
                           ("error", self.error), ("warnings", list(self.warnings)), ("metrics", self.metrics)):
            if value:
                out[key] = json.dumps(value, separators=(",", ":"))
        if self.stage:
            out["stage"] = self.stage
        if self.execution:
            out["execution"] = self.execution
        return out

    @classmethod
    def from_firestore(cls, request_id: str, d: Mapping[str, Any], version: int) -> Record:
        """The record a Firestore document holds (what `firestore_fields` wrote, at `version`): the
        archive of a record Redis no longer keeps, or the copy of one it lost. The queue's own
        bookkeeping (arrival sequence, lease) is not mirrored and starts afresh."""
        stages = {s: {k: (_ms(v) if k in ("started_at", "finished_at") else v) for k, v in st.items()
                      if k not in _STAGE_WRITTEN_KEYS and v is not None}
                  for s, st in (d.get("stages") or {}).items()}
        return cls(
            request_id=request_id, state=d["state"], priority=int(d["priority"]), session_id=d["session_id"],
            input=d["input"], options=dict(d.get("options") or {}),
            stages_requested=tuple(d.get("stages_requested") or ()),
            callback_token_sha256=d["callback_token_sha256"], source=d.get("source") or "api",
            webhook_url=d.get("webhook_url") or None, created_at=_ms(d["created_at"]) or 0,
            updated_at=_ms(d["updated_at"]) or 0, stage=d.get("stage") or None, stages=stages,
            progress={s: float(f) for s, f in (d.get("progress") or {}).items()},
            outputs=dict(d.get("outputs") or {}), error=dict(d["error"]) if d.get("error") else None,
            warnings=tuple(d.get("warnings") or ()), metrics=dict(d.get("metrics") or {}), seq=0,
            version=version, attempts=int(d.get("attempts") or 0), lease_expires_at=None,
            execution=d.get("execution") or None)

    def firestore_fields(self) -> Iterator[tuple[tuple[str, ...], Any]]:
        """(field path parts, value) of every field the control plane owns in the Firestore document
        (functions.status.mirror writes them; the stages own STAGE_FIELDS' other keys)."""
        yield from (((k,), v) for k, v in {
            "state": self.state, "priority": self.priority, "session_id": self.session_id, "input": self.input,
            "options": dict(self.options), "stages_requested": list(self.stages_requested),
            "created_at": _ts(self.created_at), "updated_at": _ts(self.updated_at), "stage": self.stage,
            "callback_token_sha256": self.callback_token_sha256, "execution": self.execution,
            "attempts": self.attempts, "source": self.source, "webhook_url": self.webhook_url}.items())
        for stage, st in self.stages.items():
            for key in ("state", "batch_job", STAGE_MACHINE_KEY):
                if key in st:
                    yield ("stages", stage, key), st[key]
            for key in ("started_at", "finished_at"):
                yield ("stages", stage, key), _ts(st.get(key))
        for stage, frac in self.progress.items():
            yield ("progress", stage), float(frac)
        # The whole map: a delete or a restart empties it, and the copy must not keep old ones.
        yield ("outputs",), dict(self.outputs)
        if self.error or self.state in _NO_STAGE_ERROR_STATES:
            # A failing stage writes its error here itself; a request that is completed (that
            # failure is one of its warnings), deleted or queued again has none.
            yield ("error",), dict(self.error) if self.error else None
        yield ("warnings",), [dict(w) for w in self.warnings]
        yield ("metrics",), {stage: dict(m) for stage, m in self.metrics.items()}

    def execution_argument(self, workspace: str, jobs: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow's argument (docs/contracts.md "Workflow execution argument"), `jobs` being
        what functions.dispatch.batch_job.stage_jobs makes of the stages."""
        arg = {"request_id": self.request_id, "workspace": workspace, "input": self.input,
               "options": self.options, "priority": self.priority, **jobs}
        if self.webhook_url:
            arg["webhook_url"] = self.webhook_url
        return arg

    def request_json(self) -> dict[str, Any]:
        """`{workspace}/request.json` (core.workspace): what every stage reads first."""
        return {"request_id": self.request_id, "input": self.input, "options": self.options,
                "stages": list(self.stages_requested)}
