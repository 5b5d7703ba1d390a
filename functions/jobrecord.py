"""The job record: states, legal transitions, stages and the Firestore document's field names.

This module is the one definition of a request's record shared by the control plane
(`functions`) and the data plane (`batch_jobs` imports it; nothing here imports heavy code).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

from functions.stages import ORDER

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
# QUEUED (never through the HTTP API; functions/request_queue.py).

STAGES: tuple[str, ...] = ORDER
"""The pipeline's stages, in order (the stage registry, functions.stages)."""


class StageState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    SKIPPED = "SKIPPED"  # a rerun found a matching _SUCCESS.json
    FAILED = "FAILED"


PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
"""0 is the highest priority."""

# Firestore document fields (DESIGN "Firestore"). Nested fields are written with dotted paths
# (`progress.frames`) so writers never clobber each other's parts of the document:
#   - the control plane owns state, priority, session_id, input, options, created_at,
#     updated_at, stage, stages.{s}.{state,started_at,finished_at,batch_job}, outputs, error,
#     warnings, metrics, callback_token_sha256;
#   - a running stage owns progress.{s} and stages.{s}.message (and writes error on failure).
FIELD_STATE = "state"
FIELD_PRIORITY = "priority"
FIELD_SESSION_ID = "session_id"
FIELD_INPUT = "input"
FIELD_OPTIONS = "options"
FIELD_CREATED_AT = "created_at"
FIELD_UPDATED_AT = "updated_at"
FIELD_STAGE = "stage"
FIELD_PROGRESS = "progress"
FIELD_STAGES = "stages"
FIELD_OUTPUTS = "outputs"
FIELD_ERROR = "error"
FIELD_CALLBACK_TOKEN_SHA256 = "callback_token_sha256"
FIELD_WARNINGS = "warnings"  # [{code, message, stage}]: what went wrong without failing the request
FIELD_METRICS = "metrics"  # {stage: {key: scalar}}: each stage's headline figures
# Also written by the control plane's mirror (functions.status_mirror):
FIELD_STAGES_REQUESTED = "stages_requested"
FIELD_EXECUTION = "execution"  # the current Workflows execution's name
FIELD_ATTEMPTS = "attempts"  # how many times the request was handed out
FIELD_MIRROR_VERSION = "mirror_version"  # the record version the document holds (writes never go back)
# Written by a running stage next to stages.{s}.message (batch_jobs.progress):
STAGE_HEARTBEAT_KEY = "heartbeat_at"
STAGE_LIVE_PREVIEW_KEY = "live_preview_at"  # when the stage last rewrote workspace.LIVE_PREVIEW


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
    return f"{FIELD_PROGRESS}.{stage}"


def stage_path(stage: str, key: str) -> str:
    """Firestore field path of one attribute of a stage (`state`, `started_at`, `message`, …)."""
    return f"{FIELD_STAGES}.{stage}.{key}"


def nested(fields: Iterable[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """`((parts of a field path), value)` pairs as one nested map, for a create or a merge-set."""
    out: dict[str, Any] = {}
    for parts, value in fields:
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out
