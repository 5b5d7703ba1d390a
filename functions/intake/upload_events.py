"""`on_upload`: a Cloud Storage object-finalized event on the uploads bucket may become a request.

- `{session_id}/…/name.mp4` (a video by extension or content type) -> a request for that video;
- `{session_id}/…/_UPLOAD_COMPLETE` -> a request for the image prefix it closes
  (`gs://bucket/{session_id}/…/`), uploaded before the marker;
- anything else (the images themselves, objects under `{session_id}/_api/`, which the api stored
  for `POST /preprocess-video`, other buckets) is ignored.

The object's custom metadata may carry `priority` (0-9), `options` (a JSON object) and
`webhook_url`; bad metadata is logged and the upload ignored (an event retry would not fix it).
Delivery is at least once: the bucket/name/generation is the request's dedup key, so a repeated
event answers with the request the first one made. A Redis failure raises, so the event is
retried.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core import logs
from core.log_events import Event
from core.media import is_video
from functions.context import Services
from functions.errors import InvalidRequestError
from functions.intake import accept as intake
from functions.intake import dedup, validation
from functions.intake.video_upload import API_SEGMENT

log = logging.getLogger("splatpipe.on_upload")

FINALIZED = "google.cloud.storage.object.v1.finalized"
MARKER = "_UPLOAD_COMPLETE"


@dataclass(frozen=True)
class Outcome:
    action: str  # "enqueued" | "duplicate" | "rejected" | "ignored"
    reason: str = ""
    request_id: str | None = None


class Refusal(str):
    """Why an object that stands for a request (a video, a marker) is refused: its metadata is
    bad. A plain str reason: the object stands for no request at all."""

    code = "invalid_metadata"

    def __new__(cls, reason: str, code: str | None = None) -> Refusal:
        refusal = super().__new__(cls, reason)
        if code is not None:
            refusal.code = code
        return refusal


def request_from_object(data: Mapping[str, Any], uploads_bucket: str, allowed_buckets: tuple[str, ...],
                        *, local: bool = False) -> validation.NewRequest | str:
    """The request an uploaded object stands for, or the reason it stands for none."""
    bucket = data.get("bucket")
    name = data.get("name")
    if bucket != uploads_bucket:
        return f"bucket {bucket!r} is not the uploads bucket"
    if not isinstance(name, str) or "/" not in name:
        return "object is not under a session prefix"
    segments = name.split("/")
    if len(segments) > 2 and segments[1] == API_SEGMENT:
        return "object was stored by the api for /preprocess-video"
    if segments[-1] == MARKER:
        uri = f"gs://{bucket}/{name[: -len(MARKER)]}"
    elif is_video(name) or str(data.get("contentType", "")).startswith("video/"):
        uri = f"gs://{bucket}/{name}"
    else:
        return "neither a video nor an upload-complete marker"
    meta = data.get("metadata") or {}
    if not isinstance(meta, Mapping):
        meta = {}
    try:
        options_raw = meta.get("options")
        options = json.loads(options_raw) if isinstance(options_raw, str) and options_raw.strip() else None
        prio_raw = meta.get("priority")
        prio_text = prio_raw.strip() if isinstance(prio_raw, str) and prio_raw.strip() else None
        return validation.NewRequest(
            session_id=validation.session_id(segments[0]),
            input=validation.gs_uri(uri, allowed_buckets),
            priority=validation.query_priority(prio_text),
            options=validation.options(options),
            stages=validation.stages(None),
            webhook_url=validation.webhook_url(meta.get("webhook_url"), local=local),
        )
    except ValueError as exc:
        return Refusal(f"bad object metadata: {exc}")
    except InvalidRequestError as exc:
        return Refusal(exc.message, exc.code)


def handle(event_type: str, data: Mapping[str, Any], svc: Services) -> Outcome:
    if event_type != FINALIZED:
        return Outcome("ignored", f"event type {event_type}")
    if not isinstance(data, Mapping):
        return Outcome("ignored", "event has no object data")
    req = request_from_object(data, svc.settings.uploads_bucket, svc.settings.allowed_input_buckets,
                              local=svc.settings.local_mode)
    if isinstance(req, Refusal):
        logs.emit(Event.REQUEST_REJECTED, level=logging.WARNING, reason="invalid", source="upload",
                  error_code=req.code)
        return Outcome("rejected", req)
    if isinstance(req, str):
        return Outcome("ignored", req)
    key = dedup.upload(str(data["bucket"]), str(data["name"]), str(data.get("generation", "")))
    acc = intake.accept(svc, req, source="upload",
                        dedup_keys=[(key, max(dedup.UPLOAD_KEY_SECONDS, svc.settings.dedup_window_seconds))])
    return Outcome("enqueued" if acc.created else "duplicate", request_id=acc.request_id)


def handle_cloud_event(event: Any, svc: Services) -> Outcome:
    """Entry from functions-framework's CloudEvent (binary or structured mode)."""
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            data = None
    outcome = handle(str(event["type"]), data, svc)
    log.info("on_upload %s: %s %s %s", event.get("subject") or event.get("id"), outcome.action,
             outcome.request_id or "", outcome.reason)
    return outcome
