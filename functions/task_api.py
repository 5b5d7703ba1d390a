"""The task API's routes on the public `api` (HTTP only; functions.tasks does the work).

  POST   /uploads                        resumable upload URLs for a session's files
  GET    /options                        presets and every option
  GET    /requests?session_id=S          the session's requests (a callback token of any of them)
  POST   /requests/{id}/cancel           QUEUED|PROCESSING -> CANCELLED
  POST   /requests/{id}/restart          a finished request runs again: {from_stage?, options?}
  DELETE /requests/{id}                  outputs removed, the record kept as DELETED
  GET    /requests/{id}/download         a manifest of download URLs; `?format=zip`: one zip
  GET    /requests/{id}/live-preview     the splat training's latest preview render (PNG)

Every route is rate-limited per caller; those about a request need its callback token
(`?callback_token=` or `X-Callback-Token`), and a wrong token answers like an unknown id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask

from functions import status_view, tasks, validation
from functions.context import Services
from functions.http_json import ApiError, json_response, read_json_object
from functions.public_api import _rate_limit, _token
from functions.routing import Route

UPLOAD_BODY_BYTES = 1024 * 1024
"""`POST /uploads` may list up to tasks.MAX_UPLOAD_FILES names: more than the usual JSON limit."""
RESTART_FIELDS = frozenset({"from_stage", "options"})
UPLOAD_FIELDS = frozenset({"session_id", "files"})

_STATUS = {tasks.UnknownRequestError: 404, tasks.WrongStateError: 409, tasks.InvalidTaskInputError: 422,
           tasks.ResultTooLargeError: 413, tasks.UnavailableError: 503}


def _api_error(exc: tasks.TaskError) -> ApiError:
    return ApiError(_STATUS.get(type(exc), 422), exc.code, str(exc))


def _guard(work: Callable[[], flask.Response]) -> flask.Response:
    try:
        return work()
    except tasks.TaskError as exc:
        raise _api_error(exc) from None


def _view(svc: Services, record: dict[str, Any]) -> dict[str, Any]:
    overlay = svc.mirror.stage_fields(record["request_id"]) if svc.mirror is not None else None
    return status_view.render(record, overlay, link=svc.links.link)


def _record(request: flask.Request, svc: Services, request_id: str) -> dict[str, Any]:
    token = _token(request)
    validation.request_id(request_id)
    return tasks.authorized(svc, request_id, token)


def _optional_json(request: flask.Request) -> dict[str, Any]:
    """A JSON object body, or {} for an empty body."""
    if not request.content_length and not request.data:
        return {}
    return read_json_object(request)


def uploads(request: flask.Request, svc: Services) -> flask.Response:
    """POST /uploads"""
    headers = _rate_limit(request, svc)
    body = read_json_object(request, UPLOAD_BODY_BYTES)
    validation.reject_unknown(body, UPLOAD_FIELDS)
    if "session_id" not in body:
        raise validation.unprocessable("session_id is required", "invalid_session_id")
    sid = validation.session_id(body["session_id"])
    return _guard(lambda: json_response(tasks.start_upload(svc, sid, tasks.upload_files(body.get("files"))),
                                        201, headers))


def options(request: flask.Request, svc: Services) -> flask.Response:
    """GET /options"""
    headers = _rate_limit(request, svc)
    return json_response(tasks.options_catalog(), 200, headers)


def list_requests(request: flask.Request, svc: Services) -> flask.Response:
    """GET /requests?session_id=S"""
    headers = _rate_limit(request, svc)
    token = _token(request)
    sid = validation.session_id(request.args.get("session_id"))

    def work() -> flask.Response:
        records = tasks.session_requests(svc, sid, token)
        # The queue's records alone (no Firestore read per request): a list, not a live view.
        views = [status_view.render(r, None, link=svc.links.link) for r in records]
        return json_response({"session_id": sid, "requests": views}, 200, headers)

    return _guard(work)


def cancel(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """POST /requests/{request_id}/cancel"""
    headers = _rate_limit(request, svc)
    return _guard(lambda: json_response(_view(svc, tasks.cancel(svc, _record(request, svc, request_id))),
                                        200, headers))


def restart(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """POST /requests/{request_id}/restart"""
    headers = _rate_limit(request, svc)

    def work() -> flask.Response:
        record = _record(request, svc, request_id)
        body = _optional_json(request)
        validation.reject_unknown(body, RESTART_FIELDS)
        from_stage = body.get("from_stage")
        if from_stage is not None and not isinstance(from_stage, str):
            raise validation.unprocessable("from_stage must be a stage name", "invalid_stage")
        overrides = body.get("options")
        if overrides is not None and not isinstance(overrides, dict):
            raise validation.unprocessable("options must be an object of option overrides", "invalid_options")
        return json_response(_view(svc, tasks.restart(svc, record, from_stage, overrides)), 202, headers)

    return _guard(work)


def delete(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """DELETE /requests/{request_id}"""
    headers = _rate_limit(request, svc)
    return _guard(lambda: json_response(_view(svc, tasks.delete(svc, _record(request, svc, request_id))),
                                        200, headers))


def download(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """GET /requests/{request_id}/download[?format=zip]"""
    headers = _rate_limit(request, svc)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "zip"):
        raise validation.unprocessable("format must be json or zip", "invalid_format")

    def work() -> flask.Response:
        record = _record(request, svc, request_id)
        if fmt == "json":
            return json_response(tasks.manifest(svc, record), 200, headers)
        resp = flask.Response(tasks.zip_bytes(svc, record), status=200, mimetype="application/zip")
        resp.headers["Content-Disposition"] = f'attachment; filename="{request_id}.zip"'
        for k, v in headers.items():
            resp.headers[k] = v
        return resp

    return _guard(work)


def live_preview(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """GET /requests/{request_id}/live-preview: the training's latest render (the token may be in
    the query, so that an <img> can show it)."""
    headers = _rate_limit(request, svc)

    def work() -> flask.Response:
        resp = flask.Response(tasks.live_preview(svc, _record(request, svc, request_id)), status=200,
                              mimetype="image/png")
        resp.headers["Cache-Control"] = "no-store"
        for k, v in headers.items():
            resp.headers[k] = v
        return resp

    return _guard(work)


ROUTES = (
    Route("POST", "/uploads", uploads),
    Route("GET", "/options", options),
    Route("GET", "/requests", list_requests),
    Route("POST", "/requests/{request_id}/cancel", cancel),
    Route("POST", "/requests/{request_id}/restart", restart),
    Route("DELETE", "/requests/{request_id}", delete),
    Route("GET", "/requests/{request_id}/download", download),
    Route("GET", "/requests/{request_id}/live-preview", live_preview),
)
