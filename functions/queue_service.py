"""The internal `queue` function's routes (IAM-only invokers: the workflow, operators)."""

from __future__ import annotations

import flask

from functions import intake, status_view, validation
from functions.context import Services
from functions.http_json import ApiError, json_response, read_json_object
from functions.request_queue import IllegalTransitionError, RecordNotFoundError
from functions.routing import Route


def enqueue(request: flask.Request, svc: Services) -> flask.Response:
    """POST /enqueue: the trigger body, plus `stages`; no rate limit (callers are trusted)."""
    body = read_json_object(request)
    req = validation.new_request(body, svc.settings.allowed_input_buckets, allow_stages=True,
                                 local=svc.settings.local_mode)
    acc = intake.accept(svc, req, source="queue")
    out: dict[str, object] = {"request_id": acc.request_id, "state": acc.state,
                              "status_url": f"/status/{acc.request_id}", "deduplicated": not acc.created}
    if acc.created:
        out["callback_token"] = acc.callback_token
    return json_response(out, 202 if acc.created else 200)


def _view(svc: Services, record: dict, overlay: bool = True) -> dict:
    fields = svc.mirror.stage_fields(record["request_id"]) if overlay and svc.mirror is not None else None
    return status_view.render(record, fields, link=svc.links.link, internal=True)


def get_status(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """GET /status/{request_id}"""
    validation.request_id(request_id)
    record = svc.queue.get(request_id)
    if record is None:
        raise ApiError(404, "not_found", "no such request")
    return json_response(_view(svc, record))


def put_status(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """PUT /status/{request_id} (contract 3)."""
    validation.request_id(request_id)
    patch = validation.status_patch(read_json_object(request))
    try:
        record = svc.queue.update(request_id, patch, svc.settings.lease_seconds)
    except RecordNotFoundError:
        raise ApiError(404, "not_found", "no such request") from None
    except IllegalTransitionError as exc:
        raise ApiError(409, "illegal_transition", str(exc)) from None
    if svc.mirror is not None:
        svc.mirror.after_change(request_id)
    return json_response(_view(svc, record))


def queue_stats(request: flask.Request, svc: Services) -> flask.Response:
    """GET /queue"""
    stats = svc.queue.stats()
    stats["max_concurrent_jobs"] = svc.settings.max_concurrent_jobs
    if svc.mirror is not None:
        stats["mirror_pending"] = len(svc.queue.outbox(10_000))
    return json_response(stats)


def next_request(request: flask.Request, svc: Services) -> flask.Response:
    """GET /next: the next request, now PROCESSING with a lease; 204 when the queue is empty."""
    taken = svc.queue.take(svc.settings.lease_seconds)
    if taken is None:
        return flask.Response(status=204)
    if svc.mirror is not None:
        svc.mirror.after_change(taken.request_id)
    record = svc.queue.get(taken.request_id)
    if record is None:  # cannot happen: records are never deleted
        raise ApiError(404, "not_found", "the request vanished")
    return json_response(_view(svc, record, overlay=False))


ROUTES = (
    Route("POST", "/enqueue", enqueue),
    Route("GET", "/status/{request_id}", get_status),
    Route("PUT", "/status/{request_id}", put_status),
    Route("GET", "/queue", queue_stats),
    Route("GET", "/next", next_request),
)
