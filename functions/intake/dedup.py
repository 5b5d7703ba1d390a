"""Deduplication keys: what makes two submissions the same request.

- an idempotency key (per session): the same key always answers with the same request;
- a fingerprint of session_id + input + options + stages: the same submission within
  `DEDUP_WINDOW_SECONDS` answers with the first request, unless that one FAILED or was CANCELLED
  (then a retry is a new request);
- an uploaded object's bucket/name/generation (at-least-once event delivery): one request per
  generation, whatever became of it.

The queue's enqueue script checks and claims these keys atomically with creating the record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Eventarc retries a failed delivery for up to 24 hours: remember generations longer than that.
UPLOAD_KEY_SECONDS = 3 * 24 * 3600


@dataclass(frozen=True)
class DedupKey:
    """A Redis key suffix, and whether a FAILED/CANCELLED request still answers for it."""

    key: str
    sticky: bool


# One encoder for every call: json.dumps with non-default arguments builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(session_id: str, input_uri: str, options: dict[str, Any], stages: tuple[str, ...]) -> DedupKey:
    return DedupKey("fp:" + _sha(session_id, input_uri, _CANONICAL.encode(options), ",".join(stages)), sticky=False)


def idempotency(session_id: str, key: str) -> DedupKey:
    return DedupKey("idem:" + _sha(session_id, key), sticky=True)


def upload(bucket: str, name: str, generation: str) -> DedupKey:
    return DedupKey("gcs:" + _sha(bucket, name, generation), sticky=True)
