"""A record's status document (`Record.status`), with what the running stages wrote overlaid.

The running stage's own Firestore writes (`progress.{s}`, `stages.{s}.message`,
`stages.{s}.heartbeat_at`, and `stages.splat.live_preview_at` when the training last rewrote its
live preview, `GET /requests/{id}/live-preview`) are overlaid when Firestore has them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from functions.jobrecord import STAGE_HEARTBEAT_KEY, STAGE_LIVE_PREVIEW_KEY, Record, iso


def _iso_any(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return iso(value.timestamp() * 1000.0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso(value)
    return str(value) if value else None


def render(record: Record, stage_fields: Mapping[str, Any] | None = None, *,
           link: Callable[[str], str] = str, internal: bool = False) -> dict[str, Any]:
    """The status document of a record; `internal` adds the queue's own fields."""
    out = record.internal_status(link) if internal else record.status(link)
    fs_progress = (stage_fields or {}).get("progress") or {}
    fs_stages = (stage_fields or {}).get("stages") or {}
    for s, view in out["stages"].items():
        fs = fs_stages.get(s) if isinstance(fs_stages.get(s), dict) else {}
        view.update(message=fs.get("message") if isinstance(fs.get("message"), str) else None,
                    heartbeat_at=_iso_any(fs.get(STAGE_HEARTBEAT_KEY)),
                    live_preview_at=_iso_any(fs.get(STAGE_LIVE_PREVIEW_KEY)))
        theirs = fs_progress.get(s)
        if isinstance(theirs, int | float) and not isinstance(theirs, bool):
            out["progress"][s] = max(out["progress"][s], min(1.0, max(0.0, float(theirs))))
    return out
