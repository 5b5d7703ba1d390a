"""The internal `queue` function's routes (IAM-only invokers: the workflow, operators)."""

from __future__ import annotations

import flask

from functions.context import Services
from functions.edge.json_api import json_response, read_json_object
from functions.edge.public_api import accepted_response, rejections_logged
from functions.edge.routing import Route, collect
from functions.errors import ConflictError, NotFoundError
from functions.intake import accept as intake
from functions.intake import validation
from functions.lifecycle import access
from functions.queue_store.store import IllegalTransitionError, RecordNotFoundError
from functions.status import events, view

ROUTES: list[Route] = []
route = collect(ROUTES)


@route("POST", "/enqueue")
def enqueue(request: flask.Request, svc: Services) -> flask.Response:
    """The trigger body, plus `stages`; no rate limit (callers are trusted)."""
    with rejections_logged("queue"):
        body = read_json_object(request)
        req = validation.new_request(body, svc.settings.allowed_input_buckets, allow_stages=True,
                                     local=svc.settings.local_mode)
    return accepted_response(intake.accept(svc, req, source="queue"), {})


@route("GET", "/status/{request_id}")
def get_status(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    return json_response(view.document(svc, access.lookup(svc, validation.request_id(request_id)), internal=True))


@route("PUT", "/status/{request_id}")
def put_status(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """The workflow's and the stages' updates (docs/contracts.md)."""
    validation.request_id(request_id)
    patch = validation.status_patch(read_json_object(request))
    before = svc.queue.get(request_id)  # what the update changes decides what it logs (functions.status.events)
    try:
        record = svc.queue.update(request_id, patch, svc.settings.lease_seconds)
    except RecordNotFoundError:
        raise NotFoundError("no such request") from None
    except IllegalTransitionError as exc:
        raise ConflictError(str(exc), "illegal_transition") from None
    if svc.mirror is not None:
        svc.mirror.after_change(request_id)
    events.changed(before, record)
    return json_response(view.document(svc, record, internal=True))


@route("GET", "/requests")
def list_requests(request: flask.Request, svc: Services) -> flask.Response:
    """`?session_id=S`: the session's requests for an IAM-authorized caller (no callback token)."""
    sid = validation.session_id(request.args.get("session_id"))
    views = [view.document(svc, r, internal=True, overlay=False) for r in access.session_records(svc, sid)]
    return json_response({"session_id": sid, "requests": views})


@route("GET", "/queue")
def queue_stats(request: flask.Request, svc: Services) -> flask.Response:
    stats = svc.queue.stats()
    stats["max_concurrent_jobs"] = svc.settings.max_concurrent_jobs
    if svc.mirror is not None:
        stats["mirror_pending"] = len(svc.queue.outbox(10_000))
    return json_response(stats)


@route("GET", "/next")
def next_request(request: flask.Request, svc: Services) -> flask.Response:
    """The next request, now PROCESSING with a lease; 204 when the queue is empty."""
    taken = svc.queue.take(svc.settings.lease_seconds)
    if taken is None:
        return flask.Response(status=204)
    if svc.mirror is not None:
        svc.mirror.after_change(taken.request_id)
    # Records are never deleted: the lookup finds it.
    return json_response(view.document(svc, access.lookup(svc, taken.request_id), overlay=False, internal=True))
