"""Request bodies and identifiers, checked field by field with messages that name the field.

Every failure is a functions.errors kind (InvalidRequestError unless noted) that is safe to show the caller.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core import gcs, pricing
from core import record as jobrecord
from core.options import OptionsError, normalize_options
from functions.errors import InvalidRequestError, NotFoundError
from functions.webhooks import sender as webhook

# Identifier patterns, always applied with `fullmatch` (`$` with `match` also takes a final "\n").
REQUEST_ID_RE = re.compile(r"[0-9a-f]{32}")
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
OUTPUT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Characters we refuse in object names although Cloud Storage allows them: control characters,
# and the wildcard / URL characters that make a name mean something else to another tool.
BAD_OBJECT_CHARS = re.compile(r"[\x00-\x1f\x7f#?*\[\]\\]")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
MAX_OBJECT_NAME = 1024
MAX_URL = 2048
MAX_IDEMPOTENCY_KEY = 255
MAX_TEXT = 4096  # error messages, batch job and execution names
MAX_INT_DIGITS = 18  # any integer a query parameter carries; int() of more is never needed

TRIGGER_FIELDS = frozenset({"session_id", "input", "priority", "options", "idempotency_key", "webhook_url"})
ENQUEUE_FIELDS = TRIGGER_FIELDS | {"stages"}


@dataclass(frozen=True)
class NewRequest:
    """A validated request to enqueue."""

    session_id: str
    input: str
    priority: int
    options: dict[str, Any]
    stages: tuple[str, ...]
    idempotency_key: str | None = None
    webhook_url: str | None = None


def _utf8(value: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def request_id(value: str) -> str:
    """A request id from a path: unknown shapes are simply not found."""
    if not REQUEST_ID_RE.fullmatch(value or ""):
        raise NotFoundError("no such request")
    return value


def session_id(value: Any) -> str:
    if not isinstance(value, str) or not SESSION_ID_RE.fullmatch(value):
        raise InvalidRequestError("session_id must be 1-128 characters of letters, digits, '_', '.' or '-', "
                                  "starting with a letter or digit", "invalid_session_id")
    return value


def query_int(raw: str | None, field: str, lo: int, hi: int, code: str) -> int | None:
    """An integer from a query string or object metadata (None when absent): ASCII digits only,
    at most MAX_INT_DIGITS of them (checked before converting: int() refuses over 4,300 digits with
    a ValueError), from `lo` to `hi`; else InvalidRequestError with `code`."""
    if raw is None:
        return None
    if not (0 < len(raw) <= MAX_INT_DIGITS and raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
        raise InvalidRequestError(f"{field} must be an integer from {lo} to {hi}", code)
    return int(raw)


def query_priority(raw: str | None) -> int:
    return priority(query_int(raw, "priority", jobrecord.PRIORITY_MIN, jobrecord.PRIORITY_MAX, "invalid_priority"))


def priority(value: Any) -> int:
    if value is None:
        return jobrecord.PRIORITY_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) \
            or not jobrecord.PRIORITY_MIN <= value <= jobrecord.PRIORITY_MAX:
        raise InvalidRequestError(f"priority must be an integer from {jobrecord.PRIORITY_MIN} (highest) to "
                                  f"{jobrecord.PRIORITY_MAX}", "invalid_priority")
    return value


def gs_uri(value: Any, allowed_buckets: Iterable[str], field: str = "input") -> str:
    """A `gs://bucket/object-or-prefix` in one of the allowed buckets, with no `.`/`..` segments."""
    if not isinstance(value, str) or not value.startswith("gs://"):
        raise InvalidRequestError(f"{field} must be a gs:// URI", "invalid_uri")
    try:
        bucket, name = gcs.split_uri(value)
    except ValueError:  # no bucket
        bucket, name = "", ""
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise InvalidRequestError(f"{field} has an invalid bucket name", "invalid_uri")
    allowed = tuple(allowed_buckets)
    if bucket not in allowed:
        raise InvalidRequestError(f"{field} must be in bucket {' or '.join(allowed)}", "bucket_not_allowed")
    if not name or name == "/":
        raise InvalidRequestError(f"{field} must name an object or a prefix inside the bucket", "invalid_uri")
    if not _utf8(name) or len(name.encode("utf-8")) > MAX_OBJECT_NAME or BAD_OBJECT_CHARS.search(name):
        raise InvalidRequestError(f"{field} has an invalid object name", "invalid_uri")
    segments = name.split("/")
    if segments[-1] == "":  # a prefix: "images/" is fine
        segments = segments[:-1]
    for seg in segments:
        if seg in ("", ".", ".."):
            raise InvalidRequestError(f"{field} must not contain empty, '.' or '..' path segments", "invalid_uri")
    return value


def webhook_url(value: Any, *, local: bool = False) -> str | None:
    """An https URL (http only to this machine, in local mode) without credentials, whose host is
    on the public internet (see functions.webhooks.sender; loopback only in local mode)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise InvalidRequestError(f"webhook_url must be a URL of at most {MAX_URL} characters", "invalid_webhook_url")
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequestError("webhook_url is not a valid URL", "invalid_webhook_url") from None
    if parts.scheme not in ("https", "http") or not host \
            or (parts.scheme == "http" and not (local and webhook.is_loopback_host(host))):
        raise InvalidRequestError("webhook_url must be an https:// URL", "invalid_webhook_url")
    if parts.username is not None or parts.password is not None or _CONTROL.search(value) \
            or not _utf8(value):
        raise InvalidRequestError("webhook_url must not carry credentials or control characters", "invalid_webhook_url")
    why = webhook.acceptance_refusal(host, port, local=local)
    if why is not None:
        raise InvalidRequestError(f"webhook_url must point at a public internet host: {why}", "invalid_webhook_url")
    return value


def idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise InvalidRequestError(f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
                                  "invalid_idempotency_key")
    return value


def stages(value: Any) -> tuple[str, ...]:
    """A non-empty subset of the stages, returned in pipeline order."""
    if value is None:
        return jobrecord.STAGES
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise InvalidRequestError("stages must be a non-empty list of stage names", "invalid_stages")
    unknown = [s for s in value if s not in jobrecord.STAGES]
    if unknown:
        raise InvalidRequestError(f"unknown stage {unknown[0]!r}; stages are {', '.join(jobrecord.STAGES)}",
                                  "invalid_stages")
    if len(set(value)) != len(value):
        raise InvalidRequestError("stages must not repeat a stage", "invalid_stages")
    return tuple(s for s in jobrecord.STAGES if s in value)


def options(value: Any) -> dict[str, Any]:
    try:
        return normalize_options(value)
    except OptionsError as exc:
        raise InvalidRequestError(str(exc), "invalid_options") from None


def reject_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise InvalidRequestError(f"unknown field {extra[0]!r}; allowed fields are {', '.join(sorted(allowed))}",
                                  "unknown_field")


def new_request(body: Mapping[str, Any], allowed_buckets: Iterable[str], *, allow_stages: bool = False,
                default_stages: tuple[str, ...] = jobrecord.STAGES, local: bool = False) -> NewRequest:
    """`POST /trigger-reconstruction` (and `/enqueue`, which may also name `stages`)."""
    reject_unknown(body, ENQUEUE_FIELDS if allow_stages else TRIGGER_FIELDS)
    for key, value in body.items():
        if value is None:  # leave an optional field out rather than send null
            raise InvalidRequestError(f"{key} must not be null")
    if "session_id" not in body:
        raise InvalidRequestError("session_id is required", "invalid_session_id")
    if "input" not in body:
        raise InvalidRequestError("input is required (a gs:// URI of a video or an image prefix)", "invalid_uri")
    return NewRequest(
        session_id=session_id(body["session_id"]),
        input=gs_uri(body["input"], allowed_buckets),
        priority=priority(body.get("priority")),
        options=options(body.get("options")),
        stages=stages(body["stages"]) if allow_stages and "stages" in body else default_stages,
        idempotency_key=idempotency_key(body.get("idempotency_key")),
        webhook_url=webhook_url(body.get("webhook_url"), local=local),
    )


# --- PUT /status/{id} ----------------------------------------------------------------------------

STATUS_FIELDS = frozenset({"state", "stage", "stage_state", "batch_job", "progress", "outputs", "error",
                           "execution", "warnings", "metrics", "machine"})
_STAGE_STATES = tuple(s.value for s in jobrecord.StageState if s is not jobrecord.StageState.PENDING)


def _text(value: Any, field: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not _utf8(value):
        raise InvalidRequestError(f"{field} must be a non-empty string of at most {limit} characters")
    return value


def _stage(value: Any, field: str = "stage") -> str:
    if value not in jobrecord.STAGES:
        raise InvalidRequestError(f"{field} must be one of {', '.join(jobrecord.STAGES)}", "invalid_stage")
    return str(value)


def status_patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """The validated update, ready for the queue's update script (only the fields given; a null
    field counts as absent, which suits workflow expressions that may yield null)."""
    reject_unknown(body, STATUS_FIELDS)
    patch = {k: v for k, v in body.items() if v is not None}
    if not patch:
        raise InvalidRequestError(f"give at least one of {', '.join(sorted(STATUS_FIELDS))}", "empty_update")
    out: dict[str, Any] = {}
    if "state" in patch:
        if patch["state"] not in tuple(jobrecord.State):
            raise InvalidRequestError(f"state must be one of {', '.join(jobrecord.State)}", "invalid_state")
        out["state"] = str(patch["state"])
    if "stage" in patch:
        out["stage"] = _stage(patch["stage"])
    if "stage_state" in patch:
        if patch["stage_state"] not in _STAGE_STATES:
            raise InvalidRequestError(f"stage_state must be one of {', '.join(_STAGE_STATES)}", "invalid_stage_state")
        if "stage" not in out:
            raise InvalidRequestError("stage_state needs stage", "invalid_stage_state")
        out["stage_state"] = str(patch["stage_state"])
    if "batch_job" in patch:
        if "stage" not in out:
            raise InvalidRequestError("batch_job needs stage")
        out["batch_job"] = _text(patch["batch_job"], "batch_job")
    if "machine" in patch:  # the stage's Batch job's InstancePolicy; the record keeps the Machine it names
        if "stage" not in out:
            raise InvalidRequestError("machine needs stage", "invalid_machine")
        try:
            out[jobrecord.STAGE_MACHINE_KEY] = pricing.Machine.from_policy(patch["machine"]).as_json()
        except ValueError as exc:
            raise InvalidRequestError(str(exc), "invalid_machine") from exc
    if "execution" in patch:
        out["execution"] = _text(patch["execution"], "execution")
    if "progress" in patch:
        prog = patch["progress"]
        if not isinstance(prog, dict) or not prog:
            raise InvalidRequestError("progress must be an object {stage: fraction}", "invalid_progress")
        clean: dict[str, float] = {}
        for k, v in prog.items():
            _stage(k, "progress key")
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 1:
                raise InvalidRequestError(f"progress.{k} must be a number from 0 to 1", "invalid_progress")
            clean[k] = float(v)
        out["progress"] = clean
    if "outputs" in patch:
        outs = patch["outputs"]
        if not isinstance(outs, dict) or not outs:
            raise InvalidRequestError("outputs must be an object {name: gs:// URI}", "invalid_outputs")
        for k, v in outs.items():
            if not isinstance(k, str) or not OUTPUT_NAME_RE.fullmatch(k):
                raise InvalidRequestError("output names are 1-64 letters, digits, '_', '.' or '-'", "invalid_outputs")
            if not isinstance(v, str) or not v.startswith("gs://") or len(v) > MAX_URL:
                raise InvalidRequestError(f"outputs.{k} must be a gs:// URI", "invalid_outputs")
        out["outputs"] = dict(outs)
    if "error" in patch:
        out["error"] = _problem(patch["error"], "error", "error must be", "invalid_error")
    if "warnings" in patch:
        out["warnings"] = _warnings(patch["warnings"])
    if "metrics" in patch:
        out["metrics"] = _metrics(patch["metrics"])
    return out


def _warnings(value: Any) -> list[dict[str, str]]:
    """`[{code, message, stage?}]`: what went wrong without failing the request."""
    if not isinstance(value, list) or len(value) > jobrecord.MAX_WARNINGS:
        raise InvalidRequestError(f"warnings must be a list of at most {jobrecord.MAX_WARNINGS} objects "
                                  "{code, message, stage?}", "invalid_warnings")
    # A best-effort stage's failure must not fail the request over its message's length.
    return [_problem(w, "warnings[]", "each warning must be", "invalid_warnings", truncate=True) for w in value]


def _problem(value: Any, field: str, must: str, code: str, *, truncate: bool = False) -> dict[str, str]:
    """`{code, message, stage?}`, checked; `truncate`: a message too long is cut rather than refused."""
    if not isinstance(value, dict) or set(value) - {"code", "message", "stage"}:
        raise InvalidRequestError(f"{must} an object {{code, message, stage?}}", code)
    message = value.get("message")
    if truncate and isinstance(message, str) and len(message) > MAX_TEXT:
        message = message[:MAX_TEXT - 1] + "…"
    out = {"code": _text(value.get("code"), f"{field}.code", 200), "message": _text(message, f"{field}.message")}
    if value.get("stage") is not None:
        out["stage"] = _stage(value["stage"], f"{field}.stage")
    return out


def _metrics(value: Any) -> dict[str, dict[str, Any]]:
    """`{stage: {key: value}}`; the values a record cannot keep are dropped (jobrecord.scalar_metrics)."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidRequestError("metrics must be an object {stage: {name: value}}", "invalid_metrics")
    return {_stage(s, "metrics key"): jobrecord.scalar_metrics(v) for s, v in value.items()}
