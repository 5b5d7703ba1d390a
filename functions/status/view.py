"""The one builder of a request's status document: the record's own fields (`record_status`), with
what the running stages wrote to the mirror overlaid (`document`, what every route answers).

The running stage's own Firestore writes (`progress.{s}`, `stages.{s}.message`,
`stages.{s}.heartbeat_at`, `stages.splat.live_preview_at` when the training last rewrote its
live preview, `GET /requests/{id}/live-preview`, and `stages.splat.latest_splat_at` /
`latest_splat_step` when it last published a snapshot of its Gaussians, `GET
/requests/{id}/splat-latest`) are overlaid when Firestore has them. While a snapshot is noted the
status also names it as `outputs.splat_latest` (the link of `{workspace}/splat/latest.spz`); it
is not one of the record's outputs, so the download manifest, the zip and the webhook leave it out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from core import pricing
from core.record import (
    LATEST_SPLAT_OUTPUT,
    STAGE_HEARTBEAT_KEY,
    STAGE_LATEST_SPLAT_KEY,
    STAGE_LATEST_SPLAT_STEP_KEY,
    STAGE_LIVE_PREVIEW_KEY,
    Record,
    StageState,
    State,
    iso,
)
from core.workspace import LATEST_SPLAT

if TYPE_CHECKING:
    from functions.context import Services

SNAPSHOT_STAGE = "splat"
"""The stage whose training publishes `workspace.LATEST_SPLAT`."""


def _iso_any(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return iso(value.timestamp() * 1000.0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso(value)
    return str(value) if value else None


def _step(value: Any) -> int | None:
    """A training step the stage noted: a whole number >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None



def record_status(record: Record, link: Callable[[str], str] = str) -> dict[str, Any]:
    """The record's own part of the status document (`link` makes an output's URI a download link).
    Every requested stage appears, PENDING and 0 until it starts; a FAILED stage carries its error.
    What a running stage writes itself (`message`, `heartbeat_at`, `live_preview_at`,
    `latest_splat_at`, `latest_splat_step`, its progress, and with them `outputs.splat_latest`)
    is overlaid by `render`."""
    return {
        "request_id": record.request_id, "state": record.state, "priority": record.priority,
        "session_id": record.session_id, "input": record.input, "options": record.options,
        "stages_requested": list(record.stages_requested), "stage": record.stage,
        "stages": {s: _stage_status(record, s) for s in record.stages_requested},
        "progress": {s: float(record.progress.get(s, 0.0)) for s in record.stages_requested},
        "outputs": {name: link(uri) for name, uri in record.outputs.items()},
        "error": record.error, "warnings": [dict(w) for w in record.warnings],
        "metrics": {stage: dict(m) for stage, m in record.metrics.items()},
        "cost": pricing.configured_summary(record),  # estimated, from the stages' machines and times
        "created_at": iso(record.created_at), "updated_at": iso(record.updated_at),
    }


def internal_record_status(record: Record, link: Callable[[str], str] = str) -> dict[str, Any]:
    """The queue service's document: the public one and the queue's own fields."""
    return {**record_status(record, link), "attempts": record.attempts, "execution": record.execution,
            "lease_expires_at": iso(record.lease_expires_at), "webhook_url": record.webhook_url,
            "source": record.source}


def _stage_status(record: Record, stage: str) -> dict[str, Any]:
    st = record.stages.get(stage, {})
    return {"state": st.get("state", StageState.PENDING.value), "started_at": iso(st.get("started_at")),
            "finished_at": iso(st.get("finished_at")), "batch_job": st.get("batch_job"),
            "message": None, "heartbeat_at": None, "live_preview_at": None,
            "latest_splat_at": None, "latest_splat_step": None,
            "error": _stage_error(record, stage) if st.get("state") == StageState.FAILED else None}


def _stage_error(record: Record, stage: str) -> dict[str, str] | None:
    """A failed stage's {code, message}: the request's error when that stage failed it, else the
    warning it left (a best-effort stage fails without failing the request)."""
    for e in (record.error, *record.warnings):
        if e and e.get("stage") == stage:
            return {"code": e["code"], "message": e["message"]}
    return None


def render(record: Record, stage_fields: Mapping[str, Any] | None = None, *,
           link: Callable[[str], str] = str, internal: bool = False,
           workspace: str | None = None) -> dict[str, Any]:
    """The status document of a record; `internal` adds the queue's own fields; `workspace` (the
    request's workspace URI) lets a noted snapshot appear as `outputs.splat_latest`."""
    out = internal_record_status(record, link) if internal else record_status(record, link)
    fs_progress = (stage_fields or {}).get("progress") or {}
    fs_stages = (stage_fields or {}).get("stages") or {}
    for s, view in out["stages"].items():
        mine = fs_stages.get(s)
        fs = mine if isinstance(mine, dict) else {}
        view.update(message=fs.get("message") if isinstance(fs.get("message"), str) else None,
                    heartbeat_at=_iso_any(fs.get(STAGE_HEARTBEAT_KEY)),
                    live_preview_at=_iso_any(fs.get(STAGE_LIVE_PREVIEW_KEY)),
                    latest_splat_at=_iso_any(fs.get(STAGE_LATEST_SPLAT_KEY)),
                    latest_splat_step=_step(fs.get(STAGE_LATEST_SPLAT_STEP_KEY)))
        theirs = fs_progress.get(s)
        if isinstance(theirs, int | float) and not isinstance(theirs, bool):
            out["progress"][s] = max(out["progress"][s], min(1.0, max(0.0, float(theirs))))
    snapshot = out["stages"].get(SNAPSHOT_STAGE) or {}
    if workspace and snapshot.get("latest_splat_at") and record.state != State.DELETED.value:
        out["outputs"][LATEST_SPLAT_OUTPUT] = link(f"{workspace}/{LATEST_SPLAT}")
    return out


def document(svc: Services, record: Record, *, overlay: bool = True, internal: bool = False) -> dict[str, Any]:
    """The record's status document; `overlay`: with what its running stages wrote to the mirror."""
    fields = svc.mirror.stage_fields(record.request_id) if overlay and svc.mirror is not None else None
    return render(record, fields, link=svc.links.link, internal=internal,
                  workspace=svc.settings.workspace_uri(record.request_id))
