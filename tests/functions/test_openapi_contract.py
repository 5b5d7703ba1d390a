"""functions/openapi.yaml is true: schemathesis drives both HTTP functions from it (valid and
invalid inputs); no answer is a 5xx, and every answer matches the document."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from fn_testlib import REPO, FnApps
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.options import json_schema

OPENAPI = REPO / "functions" / "openapi.yaml"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]


@schemathesis.serializer("video/mp4", "video/quicktime")
def _video(ctx: Any, value: Any) -> bytes:
    """Generated video bodies go out as raw bytes (as a client's upload would)."""
    from schemathesis.transport.serialization import serialize_binary

    return serialize_binary(value)


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def function_document(raw: dict[str, Any], function: str) -> dict[str, Any]:
    """The operations (and parameters) one function serves, by their `x-function`."""
    doc = copy.deepcopy(raw)
    for path, item in list(doc["paths"].items()):
        for method in [m for m in item if m != "parameters"]:
            op = item[method]
            if function not in op.get("x-function", ()):
                del item[method]
                continue
            op["parameters"] = [p for p in op.get("parameters", []) if function in p.get("x-function", [function])]
        if not [m for m in item if m != "parameters"]:
            del doc["paths"][path]
    return doc


RAW = _load(OPENAPI)
API_SCHEMA = schemathesis.openapi.from_dict(function_document(RAW, "api"))
QUEUE_SCHEMA = schemathesis.openapi.from_dict(function_document(RAW, "queue"))


def test_document_covers_every_route_and_the_options_schema() -> None:
    from functions.edge import public_api, results_page, task_api
    from functions.edge import queue_api as queue_service
    from functions.webhooks import relay as webhook_relay

    assert RAW["components"]["schemas"]["Options"] == json_schema()
    for function, routes in (("api", (*public_api.ROUTES, *task_api.ROUTES, *results_page.ROUTES)),
                             ("queue", (*queue_service.ROUTES, *webhook_relay.ROUTES))):
        doc = function_document(RAW, function)
        documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
        served = {(r.method, r.pattern) for r in routes}
        assert documented == served, function


def test_a_whole_lifecycle_conforms(fn_apps: FnApps, fn_env: dict, buckets: Any, monkeypatch) -> None:
    """Generated inputs rarely reach the success answers (random buckets, unknown ids): walk them."""
    from fn_testlib import post_json, put_json

    def check(schema: Any, path: str, method: str, resp: Any, status: int) -> Any:
        assert resp.status_code == status, resp.get_data(as_text=True)
        schema[path][method].validate_response(resp)
        return resp.get_json() if resp.data else None

    body = {"session_id": "oa", "input": f"gs://{buckets.uploads}/oa/v.mp4", "options": {"preset": "preview"}}
    new = check(API_SCHEMA, "/trigger-reconstruction", "POST", post_json(fn_apps.api, "/trigger-reconstruction", body),
                202)
    check(API_SCHEMA, "/trigger-reconstruction", "POST", post_json(fn_apps.api, "/trigger-reconstruction", body), 200)
    job = check(API_SCHEMA, "/preprocess-video", "POST",
                fn_apps.api.post("/preprocess-video?session_id=oa", data=b"\0\0\0\x18ftypisom" + bytes(64),
                                 content_type="video/mp4"), 202)
    check(API_SCHEMA, "/preprocess-video", "POST",
          fn_apps.api.post("/preprocess-video?session_id=oa", data=b"\0\0\0\x18ftypisom" + bytes(64),
                           content_type="video/mp4"), 200)
    check(API_SCHEMA, "/status", "GET", fn_apps.api.get(f"/status?callback_token={new['callback_token']}"), 200)
    check(API_SCHEMA, "/status/{request_id}", "GET",
          fn_apps.api.get(f"/status/{job['job_id']}?callback_token={job['callback_token']}"), 200)
    rid = new["request_id"]
    check(QUEUE_SCHEMA, "/enqueue", "POST", post_json(fn_apps.queue, "/enqueue", {**body, "stages": ["frames"]}), 202)
    check(QUEUE_SCHEMA, "/enqueue", "POST", post_json(fn_apps.queue, "/enqueue", body), 200)
    check(QUEUE_SCHEMA, "/next", "GET", fn_apps.queue.get("/next"), 200)
    put = {"stage": "frames", "stage_state": "SUCCEEDED", "batch_job": "j", "progress": {"frames": 1},
           "outputs": {"frames": f"gs://{buckets.data}/jobs/{rid}/frames/"}, "execution": "e", "state": None}
    check(QUEUE_SCHEMA, "/status/{request_id}", "PUT", put_json(fn_apps.queue, f"/status/{rid}", put), 200)
    check(QUEUE_SCHEMA, "/status/{request_id}", "PUT",
          put_json(fn_apps.queue, f"/status/{rid}", {"state": "FAILED", "error": {"code": "c", "message": "m"}}), 200)
    check(QUEUE_SCHEMA, "/status/{request_id}", "PUT", put_json(fn_apps.queue, f"/status/{rid}", {"state": "QUEUED"}),
          409)
    check(QUEUE_SCHEMA, "/status/{request_id}", "GET", fn_apps.queue.get(f"/status/{rid}"), 200)
    check(QUEUE_SCHEMA, "/queue", "GET", fn_apps.queue.get("/queue"), 200)
    while fn_apps.queue.get("/next").status_code == 200:
        pass
    check(QUEUE_SCHEMA, "/next", "GET", fn_apps.queue.get("/next"), 204)
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "1")  # (the first request FAILED: the same body is new again)
    check(API_SCHEMA, "/trigger-reconstruction", "POST",
          post_json(fn_apps.api, "/trigger-reconstruction", body, environ_base={"REMOTE_ADDR": "10.1.1.1"}), 202)
    check(API_SCHEMA, "/trigger-reconstruction", "POST",
          post_json(fn_apps.api, "/trigger-reconstruction", body, environ_base={"REMOTE_ADDR": "10.1.1.1"}), 429)


@pytest.fixture
def schema_env(fn_env: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "100000")
    return fn_env


_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))


@API_SCHEMA.parametrize()
@_SETTINGS
def test_api_conforms(case: Any, fn_apps: FnApps, schema_env: dict) -> None:
    case.call_and_validate(app=fn_apps.api.application, checks=CHECKS)


@QUEUE_SCHEMA.parametrize()
@_SETTINGS
def test_queue_conforms(case: Any, fn_apps: FnApps, schema_env: dict) -> None:
    case.call_and_validate(app=fn_apps.queue.application, checks=CHECKS)
