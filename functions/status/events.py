"""The structured log events of a request's changes (core.log_events): a stage started or
finished, a request finished. Emitted where the control plane applies a change (a `PUT /status`,
a cancel, a lease expiry), from the record before and after it, so a retried update that changes
nothing logs nothing again.
"""

from __future__ import annotations

import logging
from typing import Any

from core import log_events as ev
from core import logs, stages
from core.record import Record, StageState, State

_STAGE_DONE = frozenset(s.value for s in (StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED))
_FINISHED = frozenset(s.value for s in (State.COMPLETED, State.FAILED, State.CANCELLED))  # not DELETED: no run ends there


def _seconds(start_ms: Any, end_ms: Any) -> float | None:
    if not isinstance(start_ms, int | float) or not isinstance(end_ms, int | float):
        return None
    return round(max(0.0, (end_ms - start_ms) / 1000.0), 3)


def stage_finished(record: Record, stage: str) -> None:
    st = record.stages.get(stage, {})
    state = str(st.get("state", ""))
    error = record.error if state == StageState.FAILED and record.error else None
    error_code = error.get("code") if error and error.get("stage") == stage else None
    if state == StageState.FAILED and error_code is None:  # a best-effort stage's failure is a warning
        error_code = next((w.get("code") for w in record.warnings if w.get("stage") == stage), None)
    logs.emit(ev.Event.STAGE_FINISHED, level=logging.WARNING if state == StageState.FAILED else logging.INFO,
              request_id=record.request_id, stage=stage, state=state, error_code=error_code,
              duration_s=_seconds(st.get("started_at"), st.get("finished_at")))


def request_finished(record: Record) -> None:
    failed = record.state == "FAILED"
    logs.emit(ev.Event.REQUEST_FINISHED, level=logging.WARNING if failed else logging.INFO,
              request_id=record.request_id, state=record.state,
              error_code=(record.error or {}).get("code") if failed else None,
              duration_s=_seconds(record.created_at, record.updated_at))


def changed(before: Record | None, after: Record) -> None:
    """The events of one change of a request's record (`before` None: not read)."""
    old_stages = before.stages if before is not None else {}
    for stage in stages.ORDER:  # in pipeline order: one update may end a stage and the request
        new = str(after.stages.get(stage, {}).get("state", ""))
        if not new or new == str(old_stages.get(stage, {}).get("state", "")):
            continue
        if new == StageState.RUNNING:
            logs.emit(ev.Event.STAGE_STARTED, request_id=after.request_id, stage=stage)
        elif new in _STAGE_DONE:
            stage_finished(after, stage)
    if after.state in _FINISHED and (before is None or before.state != after.state):
        request_finished(after)
