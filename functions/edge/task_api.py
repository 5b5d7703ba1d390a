"""The task API's routes on the public `api` (HTTP only; functions.lifecycle does the work).

  POST   /uploads                        resumable upload URLs for a session's files
  GET    /options                        presets and every option
  GET    /requests?session_id=S          the session's requests (a callback token of any of them)
  POST   /requests/{id}/cancel           QUEUED|PROCESSING -> CANCELLED
  POST   /requests/{id}/restart          a finished request runs again: {from_stage?, options?}
  DELETE /requests/{id}                  outputs removed, the record kept as DELETED
  GET    /requests/{id}/download         a manifest of download URLs; `?format=zip`: one zip
  GET    /requests/{id}/live-preview     the splat training's latest preview render (PNG)
  GET    /requests/{id}/splat-latest     the splat training's latest snapshot (SPZ)
  GET    /requests/{id}/log?line=N       the request's log lines from line N on

Every route is rate-limited per caller; those about a request need its callback token
(`?callback_token=` or `X-Callback-Token`), and a wrong token answers like an unknown id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask

from core import stages
from core.record import Record
from functions.context import Services
from functions.edge.json_api import json_response, read_json_object
from functions.edge.public_api import authorized_record, callback_token_of, charge_rate_limit
from functions.edge.routing import Route, collect
from functions.errors import InvalidRequestError
from functions.intake import validation
from functions.lifecycle import access, control, downloads, request_log
from functions.lifecycle import uploads as upload_sessions
from functions.status import view

UPLOAD_BODY_BYTES = 1024 * 1024
"""`POST /uploads` may list up to upload_sessions.MAX_UPLOAD_FILES names: more than the usual JSON limit."""
RESTART_FIELDS = frozenset({"from_stage", "options"})
UPLOAD_FIELDS = frozenset({"session_id", "files"})
MAX_LINE = 10**7
"""`GET /requests/{id}/log?line=N`: the largest N."""
ROUTES: list[Route] = []
route = collect(ROUTES)


def _optional_json(request: flask.Request) -> dict[str, Any]:
    """A JSON object body, or {} for an empty body."""
    if not request.content_length and not request.data:
        return {}
    return read_json_object(request)


@route("POST", "/uploads")
def uploads(request: flask.Request, svc: Services) -> flask.Response:
    headers = charge_rate_limit(request, svc)
    body = read_json_object(request, UPLOAD_BODY_BYTES)
    validation.reject_unknown(body, UPLOAD_FIELDS)
    if "session_id" not in body:
        raise InvalidRequestError("session_id is required", "invalid_session_id")
    sid = validation.session_id(body["session_id"])
    return json_response(upload_sessions.start_upload(svc, sid, upload_sessions.upload_files(body.get("files"))), 201, headers)


@route("GET", "/options")
def options(request: flask.Request, svc: Services) -> flask.Response:
    headers = charge_rate_limit(request, svc)
    return json_response(stages.options_catalog(), 200, headers)


@route("GET", "/requests")
def list_requests(request: flask.Request, svc: Services) -> flask.Response:
    """`?session_id=S`"""
    headers = charge_rate_limit(request, svc)
    token = callback_token_of(request)
    sid = validation.session_id(request.args.get("session_id"))
    # The queue's records alone (no Firestore read per request): a list, not a live view.
    views = [view.document(svc, r, overlay=False) for r in access.session_requests(svc, sid, token)]
    return json_response({"session_id": sid, "requests": views}, 200, headers)


def _acting(operation: Callable[[Services, Record], Record]) -> Callable[..., flask.Response]:
    """A route that applies `operation` to the path's request and answers the request's status."""
    def handler(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
        headers = charge_rate_limit(request, svc)
        return json_response(view.document(svc, operation(svc, authorized_record(request, svc, request_id))),
                             200, headers)
    return handler


cancel = route("POST", "/requests/{request_id}/cancel")(_acting(control.cancel))


@route("POST", "/requests/{request_id}/restart")
def restart(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    headers = charge_rate_limit(request, svc)
    record = authorized_record(request, svc, request_id)
    body = _optional_json(request)
    validation.reject_unknown(body, RESTART_FIELDS)
    from_stage = body.get("from_stage")
    if from_stage is not None and not isinstance(from_stage, str):
        raise InvalidRequestError("from_stage must be a stage name", "invalid_stage")
    overrides = body.get("options")
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidRequestError("options must be an object of option overrides", "invalid_options")
    return json_response(view.document(svc, control.restart(svc, record, from_stage, overrides)), 202, headers)


delete = route("DELETE", "/requests/{request_id}")(_acting(control.delete))


@route("GET", "/requests/{request_id}/download")
def download(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """`?format=zip`: the outputs as one zip, else a manifest of download URLs."""
    headers = charge_rate_limit(request, svc)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "zip"):
        raise InvalidRequestError("format must be json or zip", "invalid_format")
    record = authorized_record(request, svc, request_id)
    if fmt == "json":
        return json_response(downloads.manifest(svc, record), 200, headers)
    return flask.Response(downloads.zip_bytes(svc, record), status=200, mimetype="application/zip",
                          headers={"Content-Disposition": f'attachment; filename="{request_id}.zip"', **headers})


@route("GET", "/requests/{request_id}/live-preview")
def live_preview(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """The training's latest render (the token may be in the query, so that an <img> can show it)."""
    headers = charge_rate_limit(request, svc)
    return flask.Response(downloads.live_preview(svc, authorized_record(request, svc, request_id)), status=200,
                          mimetype="image/png", headers={"Cache-Control": "no-store", **headers})


@route("GET", "/requests/{request_id}/splat-latest")
def splat_latest(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """The training's latest snapshot of its Gaussians, an SPZ file (the status's
    `stages.splat.latest_splat_step` says which step)."""
    headers = charge_rate_limit(request, svc)
    return flask.Response(downloads.latest_splat(svc, authorized_record(request, svc, request_id)), status=200,
                          mimetype="application/octet-stream", headers={"Cache-Control": "no-store", **headers})


@route("GET", "/requests/{request_id}/log")
def log_lines(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """`?line=N`: the request's structured log lines from the N-th on (0 first), oldest first, at
    most request_log.MAX_LINES; `next_line` is where the next call goes on (NodeODM's task output)."""
    headers = charge_rate_limit(request, svc)
    record = authorized_record(request, svc, request_id)
    raw = request.args.get("line", "0").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 8 or int(raw) > MAX_LINE:
        raise InvalidRequestError(f"line must be a whole number from 0 to {MAX_LINE}", "invalid_line")
    return json_response(request_log.read(svc.settings, record, int(raw)), 200,
                         {"Cache-Control": "no-store", **headers})
