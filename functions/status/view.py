"""The one builder of a request's status document: the record's own fields (`Record.status`), with
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

from core.record import (
    LATEST_SPLAT_OUTPUT,
    STAGE_HEARTBEAT_KEY,
    STAGE_LATEST_SPLAT_KEY,
    STAGE_LATEST_SPLAT_STEP_KEY,
    STAGE_LIVE_PREVIEW_KEY,
    Record,
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


def render(record: Record, stage_fields: Mapping[str, Any] | None = None, *,
           link: Callable[[str], str] = str, internal: bool = False,
           workspace: str | None = None) -> dict[str, Any]:
    """The status document of a record; `internal` adds the queue's own fields; `workspace` (the
    request's workspace URI) lets a noted snapshot appear as `outputs.splat_latest`."""
    out = record.internal_status(link) if internal else record.status(link)
    fs_progress = (stage_fields or {}).get("progress") or {}
    fs_stages = (stage_fields or {}).get("stages") or {}
    for s, view in out["stages"].items():
        fs = fs_stages.get(s) if isinstance(fs_stages.get(s), dict) else {}
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
