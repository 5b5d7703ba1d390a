"""The Cloud Functions entry points; each hands the request to the modules that do the work.

  api        HTTP  public: POST /trigger-reconstruction, POST /preprocess-video,
                   GET /status?callback_token=, GET /status/{id} (with the token)
                   and the task API (functions.edge.task_api: uploads, options, list, cancel,
                   restart, delete, download) and the results page (functions.edge.results_page:
                   GET /view/{id}?token=, its static files under /viewer/)
  queue      HTTP  IAM-only: POST /enqueue, GET|PUT /status/{id}, GET /queue, GET /next,
                   POST /webhook/{id} (functions.webhooks.relay: the webhook, checked when sent)
  on_upload  CloudEvent  google.cloud.storage.object.v1.finalized on the uploads bucket
  dispatch   HTTP  IAM-only, POST or GET: admission control (functions.dispatch.admission)

Every HTTP answer is JSON; errors are `{"error": {"code", "message"}}`, their statuses decided
here and in functions.edge.json_api only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import flask
import functions_framework
import redis
from werkzeug.exceptions import HTTPException

from core import logs
from functions.config import Settings
from functions.context import Services, services
from functions.dispatch import admission as dispatcher
from functions.edge import public_api, results_page, task_api
from functions.edge import queue_api as queue_service
from functions.edge.json_api import (
    ApiError,
    error_response,
    http_exception_response,
    json_response,
    limit_request_bodies,
    undecodable_body_response,
)
from functions.edge.routing import Route, match
from functions.errors import DomainError, UnavailableError
from functions.intake import upload_events, video_upload
from functions.webhooks import relay as webhook_relay

log = logging.getLogger("splatpipe.functions")
logs.setup()  # one JSON object per line on stderr, as Cloud Run hands it to Cloud Logging (core.logs)

API_ROUTES = (*public_api.ROUTES, *task_api.ROUTES, *results_page.ROUTES)
QUEUE_ROUTES = (*queue_service.ROUTES, *webhook_relay.ROUTES)

# The framework's own fixed routes (/robots.txt, /favicon.ico) and errors answer in JSON too.
if functions_framework.errorhandler is not None:
    functions_framework.errorhandler(HTTPException)(http_exception_response)
    # The framework decodes a CloudEvent's body before our code runs; undecodable or too deeply
    # nested text is the sender's fault (a 400), not a crash that Eventarc would deliver again.
    functions_framework.errorhandler(UnicodeDecodeError)(undecodable_body_response)
    functions_framework.errorhandler(RecursionError)(undecodable_body_response)
# functions-framework loads this module inside its app's context.
if flask.has_app_context():
    limit_request_bodies(flask.current_app, video_upload.MAX_VIDEO_BYTES)


def _services() -> Services:
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a bad environment variable: the deployment's fault, not the caller's
        log.error("configuration error: %s", exc)
        raise ApiError(500, "configuration_error", str(exc)) from None
    return services(settings)


def _guarded(work: Callable[[], flask.Response]) -> flask.Response:
    """Run a handler; every failure becomes a JSON error (infrastructure trouble: 503)."""
    try:
        return work()
    except (ApiError, DomainError) as err:
        return error_response(err)
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
        log.error("Redis unavailable: %s", exc)
        return error_response(UnavailableError("the queue store is unavailable; retry shortly", retry_after=5))
    except Exception:
        log.exception("unexpected error")
        return error_response(ApiError(500, "internal", "internal error"))


def _serve(request: flask.Request, routes: Sequence[Route]) -> flask.Response:
    def work() -> flask.Response:
        handler, params = match(routes, request.method, request.path)
        rid = params.get("request_id", "")
        # The lines of a call about one request carry its id (a well-formed one: it is the caller's text).
        with logs.context(request_id=rid if rid.isalnum() and len(rid) <= 64 else None):
            return handler(request, _services(), **params)

    return _guarded(work)


@functions_framework.http
def api(request: flask.Request) -> flask.Response:
    return _serve(request, API_ROUTES)


@functions_framework.http
def queue(request: flask.Request) -> flask.Response:
    return _serve(request, QUEUE_ROUTES)


@functions_framework.cloud_event
def on_upload(event: Any) -> None:
    # Errors propagate: the platform answers 500 and Eventarc delivers the event again.
    upload_events.handle_cloud_event(event, _services())


@functions_framework.http
def dispatch(request: flask.Request) -> flask.Response:
    def work() -> flask.Response:
        if request.method not in ("POST", "GET"):
            raise ApiError(405, "method_not_allowed", "dispatch takes POST or GET", {"Allow": "GET, POST"})
        svc = _services()
        return json_response(dispatcher.run(svc, svc.executor()))

    return _guarded(work)
