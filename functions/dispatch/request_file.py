"""A request's `{workspace}/request.json` (`Record.request_json`), what every stage reads first.

Written by dispatch before it starts the request's execution (not when the request is accepted:
that stays one Redis script, so a Cloud Storage outage never slows or fails an accept), and by a
restart with the new options. The stages own everything else under the workspace.
"""

from __future__ import annotations

import json
from typing import Any

from core import gcs
from core.record import Record
from core.workspace import REQUEST_FILE
from functions.config import Settings


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
