"""The engine as a server: the real google-cloud-workflows ExecutionsClient over gRPC, the Batch REST
front; the Cloud Storage and Batch connectors against real back ends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud.workflows.executions_v1 import Execution
from wfcheck import result

from emulator.workflows.server import EngineServer
from functions.dispatch.executions import executions_client

PARENT = "projects/splatpipe-local/locations/us-central1/workflows/echo"
ECHO = """
main:
  params: [args]
  steps:
    - wait:
        call: sys.sleep
        args:
          seconds: ${default(map.get(args, "sleep"), 0)}
    - check:
        switch:
          - condition: ${map.get(args, "fail") == true}
            steps:
              - fail:
                  raise:
                    code: "ASKED"
                    message: "asked to fail"
    - r:
        return:
          echo: ${args}
          env: ${sys.get_env("SETTING")}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EngineServer]:
    (tmp_path / "echo.yaml").write_text(ECHO)
    srv = EngineServer(tmp_path / "run", {"echo": tmp_path / "echo.yaml"}, {"SETTING": "on"}).start()
    yield srv
    srv.stop()


def _wait_state(client: Any, name: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        ex = client.get_execution(name=name)
        if ex.state != Execution.State.ACTIVE or time.monotonic() > deadline:
            return ex
        time.sleep(0.05)


def test_executions_client_create_get_list_cancel(server: EngineServer) -> None:
    client = executions_client(server.host)
    ex = client.create_execution(parent=PARENT, execution=Execution(argument=json.dumps({"x": 1})))
    assert ex.name.startswith(PARENT + "/executions/") and ex.state == Execution.State.ACTIVE
    done = _wait_state(client, ex.name)
    assert done.state == Execution.State.SUCCEEDED
    assert json.loads(done.result) == {"echo": {"x": 1}, "env": "on"}
    assert done.end_time and done.duration

    failing = client.create_execution(parent=PARENT, execution=Execution(argument=json.dumps({"fail": True})))
    failed = _wait_state(client, failing.name)
    assert failed.state == Execution.State.FAILED
    assert json.loads(failed.error.payload) == {"code": "ASKED", "message": "asked to fail"}

    slow = client.create_execution(parent=PARENT, execution=Execution(argument=json.dumps({"sleep": 30})))
    active = list(client.list_executions(request={"parent": PARENT, "filter": 'state="ACTIVE"'}))
    assert [e.name for e in active] == [slow.name]
    cancelled = client.cancel_execution(name=slow.name)
    assert cancelled.state == Execution.State.CANCELLED

    listed = list(client.list_executions(parent=PARENT))
    assert [e.name for e in listed] == [slow.name, failing.name, ex.name]  # newest first
    with pytest.raises(gexc.NotFound):
        client.get_execution(name=PARENT + "/executions/nope")
    with pytest.raises(gexc.NotFound):
        client.create_execution(parent=PARENT.replace("echo", "nope"), execution=Execution(argument="{}"))
    with pytest.raises(gexc.InvalidArgument):
        client.create_execution(parent=PARENT, execution=Execution(argument="{bad"))


def test_batch_rest_front(server: EngineServer) -> None:
    base = f"http://{server.batch_host}"
    parent = "projects/splatpipe-local/locations/us-central1"
    body = {"taskGroups": [{"taskSpec": {"runnables": [{"script": {"text": "sleep 30"}}], "maxRetryCount": 0}}]}
    r = requests.post(f"{base}/v1/{parent}/jobs", params={"job_id": "rest-job"}, json=body, timeout=10)
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    assert name == f"{parent}/jobs/rest-job"
    assert requests.post(f"{base}/v1/{parent}/jobs", params={"job_id": "rest-job"}, json=body,
                         timeout=10).json()["error"]["status"] == "ALREADY_EXISTS"
    assert [j["name"] for j in requests.get(f"{base}/v1/{parent}/jobs", timeout=10).json()["jobs"]] == [name]
    deadline = time.monotonic() + 20
    while not requests.get(f"{base}/emulator/batch/processes", timeout=10).json()["processes"]:
        assert time.monotonic() < deadline, "the job's task never started"
        time.sleep(0.05)
    assert requests.get(f"{base}/v1/{name}", timeout=10).json()["status"]["state"] == "RUNNING"
    assert requests.delete(f"{base}/v1/{name}", timeout=30).json() == {"name": name, "done": True}
    missing = requests.get(f"{base}/v1/{name}", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert requests.get(f"{base}/emulator/batch/processes", timeout=10).json() == {"processes": []}
    bad = requests.post(f"{base}/v1/{parent}/jobs", data=b"{not json", timeout=10)
    assert bad.status_code == 400
    # The Executions API is gRPC only (test_executions_client_create_get_list_cancel).
    assert requests.get(f"{base}/v1/{PARENT}/executions", timeout=10).status_code == 404
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"ok": True}


def test_storage_connector_reads_the_emulator(run_workflow: Any, gcs_bucket: str) -> None:
    from batch_jobs import storage

    storage.write_json(f"gs://{gcs_bucket}/jobs/r1/frames/_ERROR.json", {"code": "X", "message": "m"})
    storage.write_bytes(f"gs://{gcs_bucket}/jobs/r1/raw.bin", b"\x01\x02")
    ex = run_workflow("""
main:
  params: [bucket]
  steps:
    - media:
        call: googleapis.storage.v1.objects.get
        args:
          bucket: ${bucket}
          object: ${text.url_encode("jobs/r1/frames/_ERROR.json")}
          alt: "media"
        result: doc
    - raw:
        call: googleapis.storage.v1.objects.get
        args:
          bucket: ${bucket}
          object: ${text.url_encode("jobs/r1/raw.bin")}
          alt: "media"
        result: raw
    - meta:
        call: googleapis.storage.v1.objects.get
        args:
          bucket: ${bucket}
          object: ${text.url_encode("jobs/r1/raw.bin")}
        result: meta
    - listing:
        call: googleapis.storage.v1.objects.list
        args:
          bucket: ${bucket}
          prefix: "jobs/r1/"
        result: listing
    - unencoded:
        try:
          call: googleapis.storage.v1.objects.get
          args:
            bucket: ${bucket}
            object: "jobs/r1/raw.bin"
        except:
          as: e
          steps:
            - keep:
                assign:
                  - unencoded_code: ${e.code}
    - r:
        return: ${[doc, get_type(raw), len(raw), meta.size, len(listing.items), unencoded_code]}
""", gcs_bucket)
    assert result(ex) == [{"code": "X", "message": "m"}, "bytes", 2, "2", 2, 404]


BATCH_CALL = """
main:
  params: [args]
  steps:
    - create:
        try:
          call: googleapis.batch.v1.projects.locations.jobs.create
          args:
            parent: "projects/splatpipe-local/locations/us-central1"
            jobId: ${args.id}
            body:
              taskGroups:
                - taskSpec:
                    runnables:
                      - script:
                          text: ${args.script}
                    maxRetryCount: 0
            connector_params:
              timeout: ${default(map.get(args, "timeout"), 60)}
              skip_polling: ${default(map.get(args, "skip_polling"), false)}
              polling_policy:
                initial_delay: 1
                multiplier: 1.25
                max_delay: 10
          result: job
        except:
          as: e
          steps:
            - r:
                return:
                  tags: ${e.tags}
                  code: ${map.get(e, "code")}
                  state: ${map.get(map.get(e, "operation"), ["status", "state"])}
    - ok:
        return:
          state: ${job.status.state}
          name: ${job.name}
"""


def test_batch_connector_waits_for_the_job(run_workflow: Any) -> None:
    ok = result(run_workflow(BATCH_CALL, {"id": "ok-job", "script": "exit 0"}))
    assert ok == {"state": "SUCCEEDED", "name": "projects/splatpipe-local/locations/us-central1/jobs/ok-job"}
    failed = result(run_workflow(BATCH_CALL, {"id": "bad-job", "script": "exit 1"}))
    assert failed == {"tags": ["OperationError"], "code": None, "state": "FAILED"}
    slow = result(run_workflow(BATCH_CALL, {"id": "slow-job", "script": "sleep 30", "timeout": 0.5}))
    assert slow["tags"] == ["TimeoutError"]
    started = result(run_workflow(BATCH_CALL, {"id": "async-job", "script": "sleep 1", "skip_polling": True}))
    assert started["state"] in ("QUEUED", "SCHEDULED", "RUNNING")
    dup = result(run_workflow(BATCH_CALL, {"id": "ok-job", "script": "exit 0"}))
    assert dup == {"tags": ["HttpError"], "code": 409, "state": None}
    invalid = result(run_workflow(BATCH_CALL, {"id": "Bad_Id", "script": "exit 0"}))
    assert invalid["code"] == 400


def test_cancelling_an_execution_leaves_its_job_running_until_deleted(run_workflow: Any, engine: Any,
                                                                     local_batch: Any) -> None:
    # As on Google Cloud: a cancelled execution runs no more steps and stops nothing it started.
    ex = run_workflow(BATCH_CALL, {"id": "long-job", "script": "sleep 60"}, wait=False)
    deadline = time.monotonic() + 20
    while not local_batch.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local_batch.processes(), "the job's task never started"
    engine.cancel(ex.name)
    assert ex.state == "CANCELLED"
    (proc,) = local_batch.processes()
    assert local_batch.get_job(proc["job"])["status"]["state"] == "RUNNING"
    local_batch.delete_job(proc["job"])  # jobs.delete stops it
    assert local_batch.processes() == []


WEATHERED = """
main:
  params: [args]
  steps:
    - call_it:
        try:
          call: http.get
          args: {url: "${args.url}", timeout: 5}
          result: resp
        except:
          as: e
          steps:
            - caught:
                return: {code: "${e.code}", tags: "${e.tags}"}
    - ok:
        return: {code: "${resp.code}"}
"""


def test_weather_faults_the_engines_calls_while_it_lasts(server: EngineServer, tmp_path: Path) -> None:
    """POST /emulator/weather: a matched http call answers the fault's code, other URLs and
    later calls are untouched; a Batch method answers 503; bad faults are a 400."""
    base = f"http://{server.batch_host}"
    url = f"{base}/healthz"
    bad = requests.post(f"{base}/emulator/weather", json={"target": "http", "seconds": 5}, timeout=10)
    assert bad.status_code == 400 and "url_prefix" in bad.json()["error"]["message"]
    r = requests.post(f"{base}/emulator/weather", timeout=10,
                      json={"target": "http", "url_prefix": url, "code": 429, "seconds": 1.5})
    assert r.status_code == 200 and r.json()["faults"][0]["code"] == 429
    requests.post(f"{base}/emulator/weather", json={"target": "batch", "methods": ["get"], "seconds": 1.5},
                  timeout=10).raise_for_status()
    server.engine.deploy("weathered", WEATHERED, {})

    def run(target: str) -> Any:
        ex = server.engine.create_execution("weathered", json.dumps({"url": target}))
        assert ex.done.wait(20)
        return json.loads(ex.result)

    assert run(url) == {"code": 429, "tags": ["HttpError"]}
    assert run(f"{base}/emulator/weather")["code"] == 200  # another URL: fair weather
    with pytest.raises(Exception, match="503"):
        server.connectors.call("googleapis.batch.v1.projects.locations.jobs.get", {"name": "x"}, None)  # type: ignore[arg-type]
    assert requests.get(f"{base}/emulator/weather", timeout=10).json()["hits"] == 2
    time.sleep(1.6)
    assert run(url) == {"code": 200}
    assert requests.get(f"{base}/emulator/weather", timeout=10).json()["faults"] == []
