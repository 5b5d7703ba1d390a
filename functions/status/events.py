"""The structured log events of a request's changes (core.log_events): a stage started or
finished, a request finished. Emitted where the control plane applies a change (a `PUT /status`,
a cancel, a lease expiry), from the record before and after it, so a retried update that changes
nothing logs nothing again.
"""

from __future__ import annotations

import logging

from core import log_events as ev
from core import logs, pricing, stages
from core.record import Record, StageState, State

log = logging.getLogger("splatpipe.events")

_STAGE_DONE = frozenset(s.value for s in (StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED))
_FINISHED = frozenset(s.value for s in (State.COMPLETED, State.FAILED, State.CANCELLED))  # not DELETED: no run ends there


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _prices() -> pricing.PriceTable | None:
    try:
        return pricing.configured()
    except ValueError as exc:  # a bad PRICE_TABLE is the deployment's; the change is still logged
        log.warning("no cost in the events: %s", exc)
        return None


def stage_finished(record: Record, stage: str, prices: pricing.PriceTable | None) -> None:
    """stage.finished: its end state, run time, and what its Batch job ran on and cost
    (core.pricing: the record's `stages.{s}.machine`; absent when no job was made for it)."""
    state = str(record.stages.get(stage, {}).get("state", ""))
    error = record.error if state == StageState.FAILED and record.error else None
    error_code = error.get("code") if error and error.get("stage") == stage else None
    if state == StageState.FAILED and error_code is None:  # a best-effort stage's failure is a warning
        error_code = next((w.get("code") for w in record.warnings if w.get("stage") == stage), None)
    seconds = pricing.run_seconds(record, stage)
    vm = pricing.stage_machine(record, stage)
    logs.emit(ev.Event.STAGE_FINISHED, level=logging.WARNING if state == StageState.FAILED else logging.INFO,
              request_id=record.request_id, stage=stage, state=state, error_code=error_code,
              duration_s=_rounded(seconds),
              gpu_seconds=_rounded(vm.accelerator_count * (seconds or 0.0)) if vm else None,
              machine_type=vm.machine_type if vm else None, accelerator=(vm.accelerator or "") if vm else None,
              provisioning_model=vm.provisioning_model if vm else None,
              cost_usd=_rounded(pricing.stage_cost(record, stage, prices), 6) if prices else None)


def request_finished(record: Record, prices: pricing.PriceTable | None) -> None:
    """request.finished: its end state and code, its time from acceptance, its estimated cost
    (the sum of its stages': core.pricing)."""
    failed = record.state == "FAILED"
    logs.emit(ev.Event.REQUEST_FINISHED, level=logging.WARNING if failed else logging.INFO,
              request_id=record.request_id, state=record.state,
              error_code=(record.error or {}).get("code") if failed else None,
              duration_s=round(max(0.0, (record.updated_at - record.created_at) / 1000.0), 3),
              cost_usd=round(pricing.request_cost(record, prices), 6) if prices else None)


def changed(before: Record | None, after: Record) -> None:
    """The events of one change of a request's record (`before` None: not read)."""
    old_stages = before.stages if before is not None else {}
    prices = _prices()
    for stage in stages.ORDER:  # in pipeline order: one update may end a stage and the request
        new = str(after.stages.get(stage, {}).get("state", ""))
        if not new or new == str(old_stages.get(stage, {}).get("state", "")):
            continue
        if new == StageState.RUNNING:
            logs.emit(ev.Event.STAGE_STARTED, request_id=after.request_id, stage=stage)
        elif new in _STAGE_DONE:
            stage_finished(after, stage, prices)
    if after.state in _FINISHED and (before is None or before.state != after.state):
        request_finished(after, prices)
