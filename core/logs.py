"""Structured logs: one JSON object per line, in the shape Cloud Logging parses.

Cloud Run (the functions) and Cloud Batch (the stage runner's task logs) read a process's
output line by line; a line that is one JSON object becomes the entry's `jsonPayload`, its
`severity` the entry's severity, `message` the text shown, `time` the entry's timestamp
(https://cloud.google.com/logging/docs/structured-logging,
https://cloud.google.com/batch/docs/write-task-logs). Every other key stays in `jsonPayload`, so
`jsonPayload.request_id="…"` follows one request across the functions and its Batch tasks.

What a line carries besides `time`, `severity`, `message` and `logger`: the fields of the
surrounding :func:`context` (the request and stage being worked on), and for an event
(:func:`emit`) `event` and that event's fields (core.log_events, the one vocabulary). Each line
passes :func:`redact` last: no callback token, signed URL signature, upload session id or bearer
token is ever written, whatever a message or an exception's text held.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import types
from collections.abc import Iterator, Mapping
from typing import IO, Any

from core.log_events import EVENT, FIELDS, Event

TIME = "time"
SEVERITY = "severity"
MESSAGE = "message"
LOGGER = "logger"
REDACTED = "[REDACTED]"

EVENTS_LOGGER = "splatpipe.events"
_FIELDS_ATTR = "splatpipe_fields"  # the LogRecord attribute emit() puts an event's fields in

# Cloud Logging's LogSeverity names (https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry#LogSeverity).
_SEVERITIES = ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"),
               (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG"))

_NO_CONTEXT: Mapping[str, Any] = types.MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("splatpipe_log_context",
                                                                            default=_NO_CONTEXT)


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Every line logged inside carries these fields (None values are left out); nests."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


# --- redaction -----------------------------------------------------------------------------------

# Keys whose values are secrets wherever they appear: a query parameter, a JSON key, a header.
# callback_token / token: a request's callback token (the results page takes `?token=`);
# X-Goog-Signature / X-Goog-Credential / Signature / GoogleAccessId: a signed URL's V4 and V2
# signing parameters (https://cloud.google.com/storage/docs/access-control/signed-urls);
# upload_id: a resumable upload session, which anyone holding it can write to.
_SECRET_KEYS = ("callback_token", "token", "x-goog-signature", "x-goog-credential", "signature", "googleaccessid",
                "upload_id", "access_token", "id_token", "x-callback-token", "authorization")
_SECRET_KEY_SET = frozenset(_SECRET_KEYS)
_KEYS = "|".join(re.escape(k) for k in _SECRET_KEYS)
_QUERY_PARAM = re.compile(rf"(?i)(?<![A-Za-z0-9_-])({_KEYS})=[^&\s\"'#<>]*")
_HEADER_OR_JSON = re.compile(rf"(?i)([\"']?(?:{_KEYS})[\"']?\s*[:]\s*[\"']?)(?:bearer\s+)?[^\s\"',;}}\]]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
# A token's own shape: secrets.token_urlsafe(32) is 43 characters of the URL-safe alphabet
# (functions.intake.callback_token); caught even where no key names it (an exception's text).
_TOKEN_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def _token_shaped(m: re.Match[str]) -> str:
    text = m.group(0)
    # Random text of that length has both cases; ids and names (hex, lower_case) do not.
    return REDACTED if any(c.isupper() for c in text) and any(c.islower() for c in text) else text


def redact_text(text: str) -> str:
    text = _QUERY_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _HEADER_OR_JSON.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _TOKEN_SHAPED.sub(_token_shaped, text)


def redact(value: Any) -> Any:
    """`value` with every secret replaced by REDACTED (strings, and maps and lists through)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if str(k).lower() in _SECRET_KEY_SET and v else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


# --- lines ---------------------------------------------------------------------------------------

def severity(levelno: int) -> str:
    return next((name for level, name in _SEVERITIES if levelno >= level), "DEFAULT")


def rfc3339(seconds: float) -> str:
    """A Unix time as RFC 3339 UTC with microseconds (lines of one request sort by it)."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """A LogRecord as one line of JSON (its context, its event fields), redacted."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        line: dict[str, Any] = {TIME: rfc3339(record.created), SEVERITY: severity(record.levelno),
                                MESSAGE: message, LOGGER: record.name}
        line.update(_context.get())
        line.update(getattr(record, _FIELDS_ATTR, None) or {})
        return json.dumps(redact(line), default=str, allow_nan=False, separators=(",", ":"))


def setup(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Make the root logger write JSON lines to `stream` (stderr); again is harmless."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "splatpipe_json", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.splatpipe_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def emit(event: Event, *, level: int = logging.INFO, message: str | None = None, **fields: Any) -> None:
    """Log `event` with its fields (core.log_events.FIELDS; None values are left out)."""
    unknown = set(fields) - set(FIELDS[event])
    if unknown:  # the vocabulary is fixed: Terraform's metrics filter on it
        raise ValueError(f"{event.value} has no field(s) {', '.join(sorted(unknown))} (core.log_events.FIELDS)")
    present = {k: v for k, v in fields.items() if v is not None}
    text = message or " ".join([event.value, *(f"{k}={v}" for k, v in present.items())])
    logging.getLogger(EVENTS_LOGGER).log(level, "%s", text, extra={_FIELDS_ATTR: {EVENT: event.value, **present}})
