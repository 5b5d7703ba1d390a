"""Upload sessions: resumable upload URLs that bring a caller's local files into the uploads
bucket without bucket rights; the `input` to trigger with afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.media import is_video
from functions.context import Services
from functions.errors import InvalidRequestError
from functions.intake.validation import BAD_OBJECT_CHARS
from functions.intake.video_upload import API_SEGMENT

MAX_UPLOAD_FILES = 2000
MAX_UPLOAD_NAME = 200
UPLOAD_URL_SECONDS = 6 * 3600
UPLOAD_SEGMENT = "uploads"


# --- uploads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadFile:
    name: str  # relative path, `/`-separated, as it will appear under the upload prefix
    content_type: str


def upload_files(raw: Any) -> list[UploadFile]:
    """`files`: [{name, content_type?}] -> checked entries (names safe as object name parts)."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("files must be a non-empty list of {name, content_type?}", "invalid_files")
    if len(raw) > MAX_UPLOAD_FILES:
        raise InvalidRequestError(f"at most {MAX_UPLOAD_FILES} files per upload", "invalid_files")
    out: list[UploadFile] = []
    seen: set[str] = set()
    for i, f in enumerate(raw):
        if not isinstance(f, dict) or set(f) - {"name", "content_type"} or not isinstance(f.get("name"), str):
            raise InvalidRequestError(f"files[{i}] must be an object {{name, content_type?}}", "invalid_files")
        name = f["name"]
        ct = f.get("content_type", "application/octet-stream")
        parts = name.split("/")
        if (not 0 < len(name) <= MAX_UPLOAD_NAME or BAD_OBJECT_CHARS.search(name)
                or any(p in ("", ".", "..") or p.startswith("_") for p in parts) or not name.isprintable()):
            raise InvalidRequestError(f"files[{i}].name must be a relative path of at most {MAX_UPLOAD_NAME} "
                                      "printable characters, no empty, '.', '..' or '_'-prefixed parts",
                                        "invalid_files")
        if not isinstance(ct, str) or not 0 < len(ct) <= 100 or "/" not in ct or not ct.isprintable():
            raise InvalidRequestError(f"files[{i}].content_type must be a media type", "invalid_files")
        if name in seen:
            raise InvalidRequestError(f"files[{i}].name repeats {name!r}", "invalid_files")
        seen.add(name)
        out.append(UploadFile(name, ct))
    return out


def start_upload(svc: Services, session_id: str, files: Sequence[UploadFile]) -> dict[str, Any]:
    """A fresh upload prefix of the session and a resumable upload per file. The `input` to
    trigger with afterwards is the prefix (photos) or the one file (a single video)."""
    upload_id = secrets.token_hex(8)
    # Under `{session}/_api/`, which on_upload ignores: the caller's trigger makes the one request.
    prefix = f"{session_id}/{API_SEGMENT}/{UPLOAD_SEGMENT}/{upload_id}/"
    bucket = svc.settings.uploads_bucket
    entries = []
    for f in files:
        start = svc.links.resumable_upload(f"gs://{bucket}/{prefix}{f.name}", f.content_type, UPLOAD_URL_SECONDS)
        entries.append({"name": f.name, "object": f"gs://{bucket}/{prefix}{f.name}", "method": start.method,
                        "url": start.url, "headers": start.headers, "body": start.body})
    single_video = len(files) == 1 and (files[0].content_type.startswith("video/")
                                        or is_video(files[0].name))
    return {"session_id": session_id, "upload_id": upload_id,
            "input": entries[0]["object"] if single_video else f"gs://{bucket}/{prefix}",
            "files": entries, "expires_in_seconds": UPLOAD_URL_SECONDS}
