"""A record as the status response (contract 4), with what the running stages wrote overlaid.

Times are RFC 3339 UTC strings. Every requested stage appears in `stages` and `progress` (PENDING
and 0 until it starts); a FAILED stage carries its `error`. `warnings` lists what went wrong without
failing the request (empty when nothing did); `metrics` holds each stage's headline figures. The
running stage's own Firestore writes (`progress.{s}`, `stages.{s}.message`,
`stages.{s}.heartbeat_at`, and `stages.splat.live_preview_at` when the training last rewrote its
live preview, `GET /requests/{id}/live-preview`) are overlaid when Firestore has them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from functions import jobrecord


def iso(ms: int | float | None) -> str | None:
    if ms is None:
        return None
    t = dt.datetime.fromtimestamp(float(ms) / 1000.0, tz=dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_any(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return iso(value.timestamp() * 1000.0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso(value)
    return str(value) if value else None


def _stage_error(record: Mapping[str, Any], stage: str) -> dict[str, str] | None:
    """A failed stage's {code, message}: the request's error when that stage failed it, else the
    warning it left (a best-effort stage fails without failing the request)."""
    err = record["error"]
    if err and err.get("stage") == stage:
        return {"code": err["code"], "message": err["message"]}
    for w in record["warnings"]:
        if w.get("stage") == stage:
            return {"code": w["code"], "message": w["message"]}
    return None


def render(record: Mapping[str, Any], stage_fields: Mapping[str, Any] | None = None, *,
           link: Callable[[str], str] = lambda u: u, internal: bool = False) -> dict[str, Any]:
    """The status document of a decoded record; `internal` adds the queue's own fields."""
    fs_progress = (stage_fields or {}).get(jobrecord.FIELD_PROGRESS) or {}
    fs_stages = (stage_fields or {}).get(jobrecord.FIELD_STAGES) or {}
    stages: dict[str, Any] = {}
    progress: dict[str, float] = {}
    for s in record["stages_requested"]:
        st = record["stages"].get(s, {})
        fs = fs_stages.get(s) if isinstance(fs_stages.get(s), dict) else {}
        stages[s] = {
            "state": st.get("state", jobrecord.StageState.PENDING.value),
            "started_at": iso(st.get("started_at")),
            "finished_at": iso(st.get("finished_at")),
            "batch_job": st.get("batch_job"),
            "message": fs.get("message") if isinstance(fs.get("message"), str) else None,
            "heartbeat_at": _iso_any(fs.get(jobrecord.STAGE_HEARTBEAT_KEY)),
            "live_preview_at": _iso_any(fs.get(jobrecord.STAGE_LIVE_PREVIEW_KEY)),
            "error": _stage_error(record, s) if st.get("state") == jobrecord.StageState.FAILED else None,
        }
        frac = float(record["progress"].get(s, 0.0))
        theirs = fs_progress.get(s)
        if isinstance(theirs, int | float) and not isinstance(theirs, bool):
            frac = max(frac, min(1.0, max(0.0, float(theirs))))
        progress[s] = frac
    out: dict[str, Any] = {
        "request_id": record["request_id"],
        "state": record["state"],
        "priority": record["priority"],
        "session_id": record["session_id"],
        "input": record["input"],
        "options": record["options"],
        "stages_requested": list(record["stages_requested"]),
        "stage": record["stage"],
        "stages": stages,
        "progress": progress,
        "outputs": {name: link(uri) for name, uri in record["outputs"].items()},
        "error": record["error"],
        "warnings": [dict(w) for w in record["warnings"]],
        "metrics": {stage: dict(m) for stage, m in record["metrics"].items()},
        "created_at": iso(record["created_at"]),
        "updated_at": iso(record["updated_at"]),
    }
    if internal:
        out.update({
            "attempts": record["attempts"],
            "execution": record["execution"],
            "lease_expires_at": iso(record["lease_expires_at"]),
            "webhook_url": record["webhook_url"],
            "source": record["source"],
        })
    return out
