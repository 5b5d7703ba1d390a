"""JSON over HTTP: errors as responses, JSON responses, and reading request bodies.

Every error leaves as `{"error": {"code", "message"}}` with a fitting status. The domain modules
raise functions.errors kinds and :func:`http_error` gives each its status (the one place that
decides it); :class:`ApiError` is for what only HTTP has (methods, media types, body limits, the
rate limit's 429).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import flask
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from functions import errors

MAX_JSON_BYTES = 64 * 1024
"""Largest JSON body any route takes (a request is a few hundred bytes)."""

READ_PIECE = 1024 * 1024  # a body is read in pieces: never more than its limit, never twice over


class ApiError(Exception):
    """An error the caller sees: HTTP status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


_STATUS: dict[type[errors.DomainError], int] = {
    errors.DomainError: 422, errors.InvalidRequestError: 422, errors.NotFoundError: 404, errors.ConflictError: 409,
    errors.TooLargeError: 413, errors.UnauthenticatedError: 401, errors.UnavailableError: 503}


def http_error(err: errors.DomainError) -> ApiError:
    """The HTTP answer to a domain error: the status of its nearest kind, and the headers it asks for."""
    headers = {}
    if isinstance(err, errors.UnauthenticatedError) and err.challenge:
        headers["WWW-Authenticate"] = f'Bearer error="{err.code}"'
    if isinstance(err, errors.UnavailableError) and err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    status = next(_STATUS[kind] for kind in type(err).__mro__ if kind in _STATUS)
    return ApiError(status, err.code, err.message, headers)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body, separators=(",", ":"), allow_nan=False), status=status,
                          mimetype="application/json", headers=headers)


def error_response(err: ApiError | errors.DomainError) -> flask.Response:
    if isinstance(err, errors.DomainError):
        err = http_error(err)
    return json_response({"error": {"code": err.code, "message": err.message}}, err.status, err.headers)


def http_exception_response(exc: HTTPException) -> flask.Response:
    """Werkzeug's own errors (the framework's fixed routes, a body larger than allowed) as JSON."""
    status = exc.code or 500
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
            400: "bad_request"}.get(status, "error")
    return error_response(ApiError(status, code, exc.description or exc.name))


def undecodable_body_response(exc: Exception) -> flask.Response:
    """A body the framework could not decode (bad text encoding, JSON nested too deeply)."""
    why = "nested too deeply" if isinstance(exc, RecursionError) else "not valid text"
    return error_response(ApiError(400, "malformed_body", f"the request body is {why}"))


def _media_type(request: flask.Request) -> str:
    return (request.mimetype or "").lower()


def require_media_type(request: flask.Request, *accepted: str) -> str:
    """The request's media type when it is one of `accepted` (a `type/*` entry allows a family), else 415."""
    media = _media_type(request)
    for a in accepted:
        if media == a or (a.endswith("/*") and media.startswith(a[:-1])):
            return media
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type must be {' or '.join(accepted)}" + (f", not {media}" if media else ""))


def limit_request_bodies(app: flask.Flask, largest: int) -> None:
    """Bodies are read only by the handlers, each up to its own limit.

    `MAX_CONTENT_LENGTH` bounds any other read (werkzeug refuses a longer declared body before
    reading it, and stops a chunked one at the limit). functions-framework also registers, after
    loading this module, an `after_request` hook that reads the whole body before answering
    (`read_request`): a 413 for a 200 MiB upload would wait for, and buffer, all 200 MiB, and a
    body over `MAX_CONTENT_LENGTH` would make that hook fail with a 500. So the first request
    removes it: gunicorn itself drains a little of an unread body (64 KiB) before reusing the
    connection, and closes the connection otherwise.
    """
    app.config["MAX_CONTENT_LENGTH"] = largest

    def drop_forced_body_read() -> None:
        hooks = app.after_request_funcs.get(None)
        if hooks and any(getattr(h, "__name__", "") == "read_request" for h in hooks):
            hooks[:] = [h for h in hooks if getattr(h, "__name__", "") != "read_request"]

    app.before_request(drop_forced_body_read)


def read_body(request: flask.Request, limit: int, *, require_length: bool = False) -> bytes:
    """The raw body, at most `limit` bytes: 413 for a longer declared `Content-Length` before any
    byte is read, 413 as soon as a chunked body passes `limit`; with `require_length`, a body
    without a `Content-Length` is a 411 (nothing read)."""
    request.max_content_length = limit
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "payload_too_large", f"request body is {length} bytes; the limit is {limit}")
    if length is None and require_length and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        raise ApiError(411, "length_required", "send the body with a Content-Length (not chunked)")
    buf = bytearray()
    over = False
    try:
        while len(buf) <= limit:
            piece = request.stream.read(min(READ_PIECE, limit + 1 - len(buf)))
            if not piece:
                break
            buf += piece
    except RequestEntityTooLarge:  # werkzeug's own limit check on a chunked body
        over = True
    if over or len(buf) > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than the limit of {limit} bytes")
    return bytes(buf)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def read_json(request: flask.Request, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON body: 415 unless `application/json`, 413 past `limit`, 400 when malformed."""
    require_media_type(request, "application/json")
    data = read_body(request, limit)
    if not data.strip():
        raise ApiError(400, "malformed_json", "request body is empty; expected a JSON object")
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


def read_json_object(request: flask.Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    body = read_json(request, limit)
    if not isinstance(body, dict):
        raise errors.InvalidRequestError("request body must be a JSON object")
    return body


def retry_after_seconds(ms: float) -> str:
    """`Retry-After` in whole seconds, at least 1."""
    return str(max(1, math.ceil(ms / 1000.0)))
