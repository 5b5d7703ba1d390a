"""A client of the running local stack for the end-to-end tests: only the stack's public faces
(the functions' HTTP APIs, the storage and Firestore emulators, the Executions API through
google-cloud-workflows' client, the local Batch runner's REST front)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import requests

from emulator.stack import StackInfo, env_overrides
from functions.dispatch.executions import executions_client

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """The first truthy value `predicate` returns within `timeout` seconds; AssertionError after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not {what} after {timeout:.0f}s")


class StackClient:
    def __init__(self, info: StackInfo) -> None:
        self.info = info
        self.urls = info.urls
        self.env = info.env
        self.uploads = info.env["UPLOADS_BUCKET"]
        self.data = info.env["DATA_BUCKET"]
        self.project = info.env["GOOGLE_CLOUD_PROJECT"]
        self.workflow = f"projects/{self.project}/locations/{info.env['REGION']}/workflows/{info.env['WORKFLOW_NAME']}"
        self.http = requests.Session()
        self.batch_url = f"http://{info.env['BATCH_EMULATOR_HOST']}"
        self.workflows = executions_client(info.env["WORKFLOWS_EMULATOR_HOST"])

    # --- storage ----------------------------------------------------------------------------
    def _storage(self) -> Any:
        from google.cloud import storage

        with env_overrides(self.env):
            return storage.Client(project=self.project)

    def put_object(self, bucket: str, name: str, data: bytes, metadata: Mapping[str, str] | None = None,
                   content_type: str = "video/mp4") -> str:
        blob = self._storage().bucket(bucket).blob(name)
        if metadata:
            blob.metadata = dict(metadata)
        blob.upload_from_string(data, content_type=content_type)
        return f"gs://{bucket}/{name}"

    def object(self, uri: str) -> Any:
        """The blob (with metadata loaded) or None."""
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return self._storage().bucket(bucket).get_blob(name)

    def read(self, uri: str) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return bytes(self._storage().bucket(bucket).blob(name).download_as_bytes())

    # --- functions ----------------------------------------------------------------------------
    def enqueue(self, body: Mapping[str, Any]) -> str:
        r = self.http.post(f"{self.urls['queue']}/enqueue", json=dict(body), timeout=30)
        assert r.status_code == 202, r.text
        return str(r.json()["request_id"])

    def preprocess(self, body: Mapping[str, Any]) -> str:
        r = self.http.post(f"{self.urls['api']}/preprocess-video", json=dict(body), timeout=30)
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    def status(self, request_id: str) -> dict[str, Any]:
        r = self.http.get(f"{self.urls['queue']}/status/{request_id}", timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def queue_stats(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.urls['queue']}/queue", timeout=30).json())

    def wait(self, request_ids: Iterable[str], timeout: float, states: tuple[str, ...] = TERMINAL,
             on_poll: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
        ids = list(request_ids)
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any]] = {}
        while True:
            if on_poll:
                on_poll()
            last = {rid: self.status(rid) for rid in ids}
            if all(s["state"] in states for s in last.values()):
                return last
            if time.monotonic() > deadline:
                pending = {rid: (s["state"], s.get("stage")) for rid, s in last.items() if s["state"] not in states}
                raise AssertionError(f"not {states} after {timeout:.0f}s: {pending}; logs in {self.info.run_dir}")
            time.sleep(0.5)

    # --- Firestore ----------------------------------------------------------------------------
    def firestore_doc(self, request_id: str) -> dict[str, Any] | None:
        from google.cloud import firestore

        with env_overrides(self.env):
            snap = firestore.Client(project=self.project).collection("reconstructions").document(request_id).get()
        return snap.to_dict() if snap.exists else None

    def request_for_input(self, input_uri: str, timeout: float = 60) -> str:
        from emulator.demo import find_request

        return find_request(self.info, input_uri, timeout)

    # --- workflows and batch -----------------------------------------------------------------
    def executions(self) -> list[dict[str, Any]]:
        """Every execution of the workflow, newest first, as the Executions API's JSON."""
        from google.cloud.workflows.executions_v1 import Execution, ExecutionView

        found = self.workflows.list_executions(request={"parent": self.workflow, "view": ExecutionView.FULL}, timeout=30)
        return [json.loads(Execution.to_json(e, use_integers_for_enums=False)) for e in found]

    def executions_of(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.executions() if json.loads(e["argument"])["request_id"] == request_id]

    def settled_executions_of(self, request_id: str, timeout: float = 60) -> list[dict[str, Any]]:
        """The request's executions once none is ACTIVE: a workflow marks its request done and then
        still calls dispatch and the webhook before its execution ends."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.executions_of(request_id)
            if all(e["state"] != "ACTIVE" for e in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)

    def batch_processes(self) -> list[dict[str, Any]]:
        r = self.http.get(f"{self.batch_url}/emulator/batch/processes", timeout=30)
        return list(r.json()["processes"])

    def preempt(self, job_name: str) -> int:
        """A Spot preemption of the job's running tasks (the local Batch runner: exit 50001)."""
        r = self.http.post(f"{self.batch_url}/emulator/batch/{job_name}:preempt", timeout=30)
        r.raise_for_status()
        return int(r.json()["preempted"])

    def weather(self, fault: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Make a fault of the engine's calls (emulator/workflows/weather.py), or list them."""
        url = f"{self.batch_url}/emulator/weather"
        r = self.http.post(url, json=dict(fault), timeout=30) if fault is not None else self.http.get(url, timeout=30)
        r.raise_for_status()
        return dict(r.json())

    def clear_weather(self) -> None:
        self.http.delete(f"{self.batch_url}/emulator/weather", timeout=30).raise_for_status()

    def batch_attempts(self, job_name: str) -> list[dict[str, Any]]:
        r = self.http.get(f"{self.batch_url}/emulator/batch/{job_name}/attempts", timeout=30)
        r.raise_for_status()
        return list(r.json()["attempts"])

    def batch_job(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"{self.batch_url}/v1/{name}", timeout=30)
        return dict(r.json())
