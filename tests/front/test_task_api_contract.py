"""The task API's success and refusal answers match functions/openapi.yaml (generated inputs in
tests/functions/test_openapi_contract.py rarely reach them: they need a real request and its token)."""

from __future__ import annotations

import copy
from typing import Any

import schemathesis
import yaml
from fn_testlib import REPO, Buckets, FnApps, post_json, put_json

from core import gcs


def _api_schema() -> Any:
    doc = yaml.safe_load((REPO / "functions" / "openapi.yaml").read_text())
    for item in doc["paths"].values():
        for method in [m for m in item if m != "parameters"]:
            if "api" not in item[method].get("x-function", ()):
                del item[method]
    doc["paths"] = {p: i for p, i in doc["paths"].items() if [m for m in i if m != "parameters"]}
    return schemathesis.openapi.from_dict(copy.deepcopy(doc))


def test_every_task_answer_conforms(fn_apps: FnApps, buckets: Buckets, fn_env: dict, monkeypatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "1000")
    schema = _api_schema()

    def check(path: str, method: str, resp: Any, status: int) -> Any:
        assert resp.status_code == status, resp.get_data(as_text=True)
        schema[path][method].validate_response(resp)
        return resp.get_json() if resp.mimetype == "application/json" else None

    up = check("/uploads", "POST", post_json(fn_apps.api, "/uploads", {"session_id": "oa", "files": [{"name": "a.jpg"}]}),
               201)
    made = post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "oa", "input": up["input"]}).get_json()
    rid, h = made["request_id"], {"X-Callback-Token": made["callback_token"]}
    check("/options", "GET", fn_apps.api.get("/options"), 200)
    check("/requests", "GET", fn_apps.api.get("/requests?session_id=oa", headers=h), 200)
    check("/requests/{request_id}/restart", "POST", fn_apps.api.post(f"/requests/{rid}/restart", headers=h), 409)
    check("/requests/{request_id}/download", "GET", fn_apps.api.get(f"/requests/{rid}/download", headers=h), 409)
    check("/requests/{request_id}/cancel", "POST", fn_apps.api.post(f"/requests/{rid}/cancel", headers=h), 200)
    check("/requests/{request_id}/cancel", "POST", fn_apps.api.post(f"/requests/{rid}/cancel", headers=h), 409)
    check("/requests/{request_id}/restart", "POST",
          post_json(fn_apps.api, f"/requests/{rid}/restart", {"from_stage": "sfm", "options": {"preset": "high"}},
                    headers=h), 202)
    fn_apps.queue.get("/next")
    gcs.client("splatpipe-local").bucket(buckets.data).blob(f"jobs/{rid}/splat/preview.png").upload_from_string(b"x")
    put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED",
                                               "outputs": {"preview": f"gs://{buckets.data}/jobs/{rid}/splat/preview.png"}})
    check("/requests/{request_id}/download", "GET", fn_apps.api.get(f"/requests/{rid}/download", headers=h), 200)
    check("/requests/{request_id}/download", "GET",
          fn_apps.api.get(f"/requests/{rid}/download?format=zip", headers=h), 200)
    check("/requests/{request_id}", "DELETE", fn_apps.api.delete(f"/requests/{rid}", headers=h), 200)
    check("/status/{request_id}", "GET", fn_apps.api.get(f"/status/{rid}", headers=h), 200)
    check("/requests/{request_id}", "DELETE", fn_apps.api.delete(f"/requests/{rid}"), 401)
    check("/requests/{request_id}", "DELETE", fn_apps.api.delete(f"/requests/{rid}", headers={"X-Callback-Token": "x"}),
          404)
