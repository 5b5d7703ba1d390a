"""A request's workspace: `{workspace}/request.json` (`Record.request_json`), what every stage reads first.

Written by dispatch before it starts the request's execution (not when the request is accepted:
that stays one Redis script, so a Cloud Storage outage never slows or fails an accept). The
stages own everything else under the workspace.
"""

from __future__ import annotations

import json
from typing import Any

from functions import gcs
from functions.config import Settings
from functions.jobrecord import Record

REQUEST_FILE = "request.json"
SUCCESS_FILE = "_SUCCESS.json"
"""A stage's completion marker, `{workspace}/{stage}/_SUCCESS.json`: while it matches, a rerun skips the stage."""
ERROR_FILE = "_ERROR.json"
"""A failed stage's `{code, message, stage, retryable}`, `{workspace}/{stage}/_ERROR.json`."""
LIVE_PREVIEW = "splat/live_preview.png"
"""The splat stage's latest render while it trains (rewritten every few hundred steps; not an output)."""
LATEST_SPLAT = "splat/latest.spz"
"""The splat stage's current Gaussians as SPZ while it trains (rewritten at each checkpoint; not an
output of the stage: the status's `stages.splat.latest_splat_step` says which step it holds)."""
CHECKPOINTS = "checkpoints"
"""`{workspace}/checkpoints/{stage}/`: a stage's resumable state while it runs (outside `{stage}/`,
which the runner clears when the stage starts); deleted when the stage succeeds."""


def _blob(settings: Settings, request_id: str) -> Any:
    return gcs.client(settings.project).bucket(settings.data_bucket).blob(f"jobs/{request_id}/{REQUEST_FILE}")


def write_request_json(settings: Settings, record: Record) -> str:
    """Write `request.json`; returns its gs:// URI. Raises on a storage error."""
    blob = _blob(settings, record.request_id)
    blob.upload_from_string(json.dumps(record.request_json(), indent=2, sort_keys=True),
                            content_type="application/json", timeout=gcs.TIMEOUT_SECONDS)
    return f"{settings.workspace_uri(record.request_id)}/{REQUEST_FILE}"


def ensure_request_json(settings: Settings, record: Record) -> bool:
    """Write `request.json` unless it is there; True when it had to be written."""
    if _blob(settings, record.request_id).exists(timeout=gcs.TIMEOUT_SECONDS):
        return False
    write_request_json(settings, record)
    return True
