"""The public `api` function's routes: trigger, preprocess, and status by callback token.

Reading a status here needs the request's callback token (`?callback_token=` or the
`X-Callback-Token` header): the api is open to the internet, request ids are not secrets. The
IAM-only `queue` function serves statuses by id alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import flask

from core import logs
from core.api import TOKEN_HEADER
from core.log_events import Event
from core.record import Record
from functions.context import Services
from functions.edge.caller import caller_key
from functions.edge.json_api import (
    ApiError,
    http_error,
    json_response,
    read_body,
    read_json_object,
    require_media_type,
    retry_after_seconds,
)
from functions.edge.routing import Route, collect
from functions.errors import DomainError, InvalidRequestError
from functions.intake import accept as intake
from functions.intake import validation, video_upload
from functions.lifecycle import access
from functions.queue_store.rate_limit import Decision, RateLimitedError
from functions.status import view

ROUTES: list[Route] = []
route = collect(ROUTES)


def _caller(request: flask.Request, svc: Services) -> str:
    s = svc.settings
    return caller_key(request.headers, request.remote_addr, trusted_hops=s.trusted_proxy_hops,
                      audience=s.auth_audience, verifier=svc.verifier)


def _refusal(svc: Services, decision: Decision) -> ApiError:
    """The 429 of a call over its caller's limit."""
    limit = svc.settings.rate_limit_per_minute
    retry = retry_after_seconds(decision.retry_after_ms)
    return ApiError(429, "rate_limited", f"more than {limit} requests in a minute; retry in {retry} s",
                    {"Retry-After": retry, "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"})


def _limit_headers(svc: Services, decision: Decision | None) -> dict[str, str]:
    """The rate-limit headers of an allowed call; 429 with Retry-After for a refused one."""
    limit = svc.settings.rate_limit_per_minute
    if decision is not None and not decision.allowed:
        raise _refusal(svc, decision)
    if decision is None or limit <= 0:
        return {}
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(decision.remaining)}


def charge_rate_limit(request: flask.Request, svc: Services) -> dict[str, str]:
    """Count this call against its caller; 429 with Retry-After when over. Headers to add."""
    return _limit_headers(svc, svc.limiter.hit(_caller(request, svc)))


def status_url(request_id: str) -> str:
    return f"/status/{request_id}"


def accepted_response(acc: intake.Accepted, headers: dict[str, str], id_field: str = "request_id") -> flask.Response:
    """202 with the callback token for a new request, 200 for the one a duplicate names."""
    body: dict[str, object] = {id_field: acc.request_id, "state": acc.state, "status_url": status_url(acc.request_id),
                               "deduplicated": not acc.created}
    if acc.created:
        body["callback_token"] = acc.callback_token
    return json_response(body, 202 if acc.created else 200, headers)


# request.rejected's `reason`: the HTTP answer's kind (the `error_code` field names the exact refusal).
_REJECTION_REASONS = {429: "rate_limited", 413: "too_large", 401: "unauthenticated", 503: "unavailable"}


@contextlib.contextmanager
def rejections_logged(source: str) -> Iterator[None]:
    """Log request.rejected (core.log_events) for a submission refused inside, and re-raise."""
    try:
        yield
    except (ApiError, DomainError) as exc:
        err = http_error(exc) if isinstance(exc, DomainError) else exc
        logs.emit(Event.REQUEST_REJECTED, level=logging.WARNING, source=source, error_code=err.code,
                  reason=_REJECTION_REASONS.get(err.status, "unavailable" if err.status >= 500 else "invalid"))
        raise


@route("POST", "/trigger-reconstruction")
def trigger(request: flask.Request, svc: Services) -> flask.Response:
    with rejections_logged("api"):
        return _trigger(request, svc)


def _trigger(request: flask.Request, svc: Services) -> flask.Response:
    # The call is counted by the enqueue script itself (one round trip per accepted trigger); a
    # body refused before it is counted on its own, so bad input counts and over the limit a
    # caller hears 429 first, as on every other route. A body with a webhook is counted first:
    # checking the webhook resolves its host (up to half a second), which a caller over the limit
    # must not get to spend.
    caller = _caller(request, svc)
    counted: Decision | None = None
    try:
        body = read_json_object(request)
        if "webhook_url" in body:
            counted = svc.limiter.hit(caller)
            _limit_headers(svc, counted)
        req = validation.new_request(body, svc.settings.allowed_input_buckets, local=svc.settings.local_mode)
    except (ApiError, DomainError):
        if counted is None:
            _limit_headers(svc, svc.limiter.hit(caller))
        raise
    if counted is not None:
        return accepted_response(intake.accept(svc, req, source="api"), _limit_headers(svc, counted))
    try:
        acc = intake.accept(svc, req, source="api", caller=caller)
    except RateLimitedError as exc:
        raise _refusal(svc, exc.decision) from None
    return accepted_response(acc, _limit_headers(svc, acc.decision))


@route("POST", "/preprocess-video")
def preprocess_video(request: flask.Request, svc: Services) -> flask.Response:
    """A JSON body naming a gs:// video, or the video itself as the body."""
    with rejections_logged("preprocess"):
        return _preprocess_video(request, svc)


def _preprocess_video(request: flask.Request, svc: Services) -> flask.Response:
    headers = charge_rate_limit(request, svc)
    media = require_media_type(request, "application/json", *video_upload.ACCEPTED_MEDIA_TYPES)
    if media == "application/json":
        if request.args:
            raise InvalidRequestError("query parameters go with a video body; put the fields in the JSON",
                                           "unknown_field")
        body = read_json_object(request)
        req = validation.new_request(body, svc.settings.allowed_input_buckets, default_stages=("frames",),
                                     local=svc.settings.local_mode)
    else:
        q = request.args
        unknown = sorted(set(q) - {"session_id", "priority", "idempotency_key"})
        if unknown:
            raise InvalidRequestError(f"unknown query parameter {unknown[0]!r}", "unknown_field")
        sid = validation.session_id(q.get("session_id"))
        prio = validation.query_priority(q.get("priority"))
        idem = validation.idempotency_key(q.get("idempotency_key"))
        data = read_body(request, video_upload.MAX_VIDEO_BYTES, require_length=True)
        uri = video_upload.store(svc.settings, sid, data)
        req = validation.NewRequest(session_id=sid, input=uri, priority=prio, options=validation.options(None),
                                    stages=("frames",), idempotency_key=idem)
    return accepted_response(intake.accept(svc, req, source="preprocess"), headers, id_field="job_id")


def callback_token_of(request: flask.Request) -> str:
    token = request.args.get("callback_token") or request.headers.get(TOKEN_HEADER) or ""
    if not token:
        raise ApiError(401, "token_required", f"pass the request's callback_token (query) or {TOKEN_HEADER} header")
    return token


def authorized_record(request: flask.Request, svc: Services, request_id: str) -> Record:
    """The record of the path's request when the request carries its callback token."""
    token = callback_token_of(request)
    return access.authorized(svc, validation.request_id(request_id), token)


@route("GET", "/status")
def status_by_token(request: flask.Request, svc: Services) -> flask.Response:
    return json_response(view.document(svc, access.by_token(svc, callback_token_of(request))))


@route("GET", "/status/{request_id}")
def status_by_id(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    return json_response(view.document(svc, authorized_record(request, svc, request_id)))
