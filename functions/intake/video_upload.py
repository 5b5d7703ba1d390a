"""`POST /preprocess-video` with the video in the body: check it is a video and store it.

The object goes to `gs://UPLOADS_BUCKET/{session_id}/_api/{sha256}.{ext}`: named by its content,
so sending the same video twice makes one object (and, through dedup, one request). `on_upload`
ignores the `_api/` segment, so storing it does not make a second request.
"""

from __future__ import annotations

import hashlib

from core import gcs
from core.media import VIDEO_CONTENT_TYPES
from functions.config import Settings
from functions.errors import InvalidRequestError

MAX_VIDEO_BYTES = 32 * 1024 * 1024
"""Cloud Functions' own request size limit: a larger video goes through a Cloud Storage upload."""

API_SEGMENT = "_api"

ACCEPTED_MEDIA_TYPES = ("video/*", "application/octet-stream")



def sniff_extension(data: bytes) -> str | None:
    """The container of `data` from its first bytes, or None when it is no video we know."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return ".mov" if data[8:12] == b"qt  " else ".mp4"
    if len(data) >= 8 and data[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return ".mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return ".webm" if b"webm" in data[:64] else ".mkv"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ".avi"
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:
        return ".ts"
    return None


def object_name(session_id: str, data: bytes, ext: str) -> str:
    return f"{session_id}/{API_SEGMENT}/{hashlib.sha256(data).hexdigest()[:40]}{ext}"


def store(settings: Settings, session_id: str, data: bytes) -> str:
    """Store the video; its gs:// URI. InvalidRequestError when `data` is not a video. Storage errors propagate."""
    if not data:
        raise InvalidRequestError("the request body is empty; send the video file", "not_a_video")
    ext = sniff_extension(data)
    if ext is None:
        raise InvalidRequestError("the body is not a video container we read (MP4/MOV, WebM/MKV, AVI, MPEG-TS)",
                                  "not_a_video")
    name = object_name(session_id, data, ext)
    blob = gcs.client(settings.project).bucket(settings.uploads_bucket).blob(name)
    if not blob.exists(timeout=gcs.TIMEOUT_SECONDS):
        blob.metadata = {"splatpipe-origin": "preprocess-video"}
        blob.upload_from_string(data, content_type=VIDEO_CONTENT_TYPES[ext], timeout=gcs.TIMEOUT_SECONDS)
    return f"gs://{settings.uploads_bucket}/{name}"
