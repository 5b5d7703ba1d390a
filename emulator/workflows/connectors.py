"""The `call:` targets the local engine serves besides subworkflows and the library:
`http.*`, the Cloud Batch connector (on the local Batch runner) and the Cloud Storage connector
(on the storage emulator, `STORAGE_EMULATOR_HOST`).

Batch `jobs.create` waits, as the connector does, until the job has ended: SUCCEEDED returns the
job; FAILED raises an OperationError whose `operation` is the failed job; past
`connector_params.timeout` (default 1800 s) a TimeoutError
(https://cloud.google.com/workflows/docs/connectors "Long-running operations").
`connector_params.skip_polling` returns the created job at once
(https://cloud.google.com/workflows/docs/reference/googleapis). The connector's `polling_policy`
is accepted; locally the runner notifies the connector when the job ends instead of being polled.
`jobs.get` and `jobs.delete` are the Batch API's (emulator.batch.runner). Cancelling the execution
stops the workflow and nothing else: the job it waited for keeps running, as on Google Cloud,
where nothing documents that a cancelled execution stops the jobs it started.

Storage `objects.get` takes an URL-encoded object name as the API does (`text.url_encode`); a raw
`/` in it is a 404 there too. With `alt: media` a JSON object comes back parsed, anything else as
bytes.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import requests

from emulator.batch.runner import BatchApiError, LocalBatch
from emulator.workflows.errors import ExecutionCancelled, tagged
from emulator.workflows.http_calls import http_call, is_http_call
from emulator.workflows.interpreter import ExecutionRuntime
from emulator.workflows.weather import Weather

BATCH = "googleapis.batch.v1.projects.locations.jobs."
STORAGE = "googleapis.storage.v1.objects."
DEFAULT_CONNECTOR_TIMEOUT = 1800.0
MAX_CONNECTOR_TIMEOUT = 31536000.0


def _http_error(code: int, status: str, message: str) -> Exception:
    body = {"error": {"code": code, "message": message, "status": status}}
    return tagged("HttpError", message, code=code, body=body, headers={})


class LocalConnectors:
    """Dispatches connector calls; `batch` may be None when no Batch runner is attached."""

    SUPPORTED = frozenset({BATCH + "create", BATCH + "get", BATCH + "delete", BATCH + "list",
                           STORAGE + "get", STORAGE + "list"})

    def __init__(self, batch: LocalBatch | None = None, storage_host: str | None = None,
                 weather: Weather | None = None) -> None:
        self.batch = batch
        self._storage_host = storage_host
        self.weather = weather or Weather()

    def has(self, name: str) -> bool:
        return is_http_call(name) or name in self.SUPPORTED

    def call(self, name: str, args: dict[str, Any], rt: ExecutionRuntime) -> Any:
        if is_http_call(name):
            url, timeout = args.get("url"), args.get("timeout", 300)
            method = str(args.get("method", "")).upper() if name == "http.request" else name.split(".")[1].upper()
            if isinstance(url, str):
                self.weather.strike("http", url, method, f"{name} {url}",
                                    float(timeout) if isinstance(timeout, int | float) else 300.0)
            return http_call(name, args)
        if name.startswith(BATCH):
            self.weather.strike("batch", "", name[len(BATCH):], name, 60.0)
            return self._batch(name[len(BATCH):], args, rt)
        if name.startswith(STORAGE):
            return self._storage(name[len(STORAGE):], args)
        raise tagged("KeyError", f"no connector {name}")

    # --- Cloud Batch ------------------------------------------------------------------------
    def _batch(self, method: str, args: dict[str, Any], rt: ExecutionRuntime) -> Any:
        if self.batch is None:
            raise _http_error(503, "UNAVAILABLE", "no local Batch runner is attached to this engine")
        params = args.get("connector_params") or {}
        try:
            if method == "create":
                job = self.batch.create_job(str(args.get("parent", "")), args.get("jobId"), args.get("body"))
                if params.get("skip_polling"):
                    return job
                return self._wait(job["name"], params, rt)
            if method == "get":
                return self.batch.get_job(str(args.get("name", "")))
            if method == "delete":
                return self.batch.delete_job(str(args.get("name", "")))
            if method == "list":
                return {"jobs": self.batch.list_jobs(str(args.get("parent", "")))}
        except BatchApiError as exc:
            raise _http_error(exc.code, exc.status, exc.message) from None
        raise tagged("KeyError", f"no connector {BATCH}{method}")

    def _wait(self, name: str, params: dict[str, Any], rt: ExecutionRuntime) -> dict[str, Any]:
        assert self.batch is not None
        timeout = params.get("timeout", DEFAULT_CONNECTOR_TIMEOUT)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= MAX_CONNECTOR_TIMEOUT:
            raise tagged("ValueError", f"connector_params.timeout must be 0 < seconds <= {MAX_CONNECTOR_TIMEOUT:g}")
        job = self.batch.wait_job(name, float(timeout), cancel=rt.cancel)
        if rt.cancel.is_set():
            raise ExecutionCancelled()
        state = job["status"]["state"]
        if state == "SUCCEEDED":
            return job
        if state == "FAILED":
            events = job["status"].get("statusEvents") or []
            last = next((e["description"] for e in reversed(events) if "exit code" in e.get("description", "")),
                        events[-1]["description"] if events else "")
            raise tagged("OperationError", f"Batch job {name} failed: {last}", operation=job)
        raise tagged("TimeoutError", f"Batch job {name} still {state} after the connector timeout of {timeout}s")

    # --- Cloud Storage ----------------------------------------------------------------------
    def _storage_base(self) -> str:
        host = self._storage_host or os.environ.get("STORAGE_EMULATOR_HOST", "")
        if not host:
            raise _http_error(503, "UNAVAILABLE", "STORAGE_EMULATOR_HOST is not set for the local engine")
        return (host if host.startswith("http") else "http://" + host).rstrip("/")

    def _storage(self, method: str, args: dict[str, Any]) -> Any:
        bucket = args.get("bucket")
        if not isinstance(bucket, str) or not bucket:
            raise tagged("ValueError", "bucket is required")
        base = f"{self._storage_base()}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        if method == "get":
            obj = args.get("object")
            if not isinstance(obj, str) or not obj:
                raise tagged("ValueError", "object is required")
            if "/" in obj:
                raise _http_error(404, "NOT_FOUND", f"No such object: {bucket}/{obj} (object names in the path "
                                                    f"must be URL-encoded: text.url_encode)")
            query = {k: str(v) for k, v in args.items() if k in ("alt", "generation", "ifGenerationMatch")}
            resp = self._request("GET", f"{base}/{obj}", query)
            if query.get("alt") == "media":
                if "json" in resp.headers.get("Content-Type", ""):
                    try:
                        return json.loads(resp.content)
                    except ValueError:
                        return resp.content
                return resp.content
            return resp.json()
        if method == "list":
            query = {k: str(v) for k, v in args.items()
                     if k in ("prefix", "delimiter", "maxResults", "pageToken", "startOffset", "endOffset")}
            return self._request("GET", base, query).json()
        raise tagged("KeyError", f"no connector {STORAGE}{method}")

    @staticmethod
    def _request(method: str, url: str, query: dict[str, str]) -> requests.Response:
        try:
            resp = requests.request(method, url, params=query, timeout=60)
        except requests.exceptions.RequestException as exc:
            raise tagged("ConnectionFailedError", f"storage emulator: {exc}") from None
        if resp.status_code >= 400:
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            raise tagged("HttpError", f"HTTP server responded with error code {resp.status_code}",
                         code=resp.status_code, body=body, headers=dict(resp.headers))
        return resp
