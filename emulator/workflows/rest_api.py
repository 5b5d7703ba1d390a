"""HTTP/JSON front of the local engine: the Executions REST API subset and the Batch jobs subset.

Executions (`https://workflowexecutions.googleapis.com` paths):
  POST /v1/projects/{p}/locations/{l}/workflows/{w}/executions      body {"argument": "<JSON>"}
  GET  /v1/projects/{p}/locations/{l}/workflows/{w}/executions      ?filter=state="ACTIVE"&pageSize&pageToken&view
  GET  /v1/projects/{p}/locations/{l}/workflows/{w}/executions/{id} ?view=BASIC|FULL
  POST /v1/projects/{p}/locations/{l}/workflows/{w}/executions/{id}:cancel
Batch (`https://batch.googleapis.com` paths):
  POST /v1/projects/{p}/locations/{l}/jobs?job_id=ID   GET …/jobs   GET|DELETE …/jobs/{id}
Local only: GET /healthz, GET /emulator/batch/processes (running task attempts with PIDs),
POST /emulator/batch/preempt?name=JOB (a simulated Spot preemption).
Errors are Google API errors: `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulator.batch.runner import BatchApiError, LocalBatch
from emulator.workflows.executions import STATE_FILTER, ApiError, WorkflowsEngine

log = logging.getLogger("emulator.workflows.rest")

_EXECS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/workflows/[^/]+)/executions$")
_EXEC = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/workflows/[^/]+/executions/[^/:]+)(:cancel)?$")
_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/jobs$")
_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/jobs/[^/:]+)$")
MAX_BODY = 1 << 20


def list_page(items: list[Any], page_size: int, token: str) -> tuple[list[Any], str]:
    start = int(token) if token.isdigit() else 0
    size = page_size if page_size > 0 else 100
    end = start + min(size, 1000)
    return items[start:end], (str(end) if end < len(items) else "")


class _Handler(BaseHTTPRequestHandler):
    engine: WorkflowsEngine
    batch: LocalBatch | None
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # --- plumbing ---------------------------------------------------------------------------
    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, status: str, message: str) -> None:
        self._send(code, {"error": {"code": code, "message": message, "status": status}})

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ApiError(413, "INVALID_ARGUMENT", "request body too large")
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"request body is not JSON: {exc}") from None

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            self._route(method, url.path, query)
        except ApiError as exc:
            self._error(exc.code, exc.status, exc.message)
        except BatchApiError as exc:
            self._error(exc.code, exc.status, exc.message)
        except Exception as exc:
            log.exception("%s %s failed", method, self.path)
            self._error(500, "INTERNAL", f"{type(exc).__name__}: {exc}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- routes -----------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, str]) -> None:
        if path == "/healthz":
            self._send(200, {"ok": True})
            return
        m = _EXECS.match(path)
        if m:
            if method == "POST":
                body = self._body()
                if not isinstance(body, dict):
                    raise ApiError(400, "INVALID_ARGUMENT", "the body is an Execution object")
                argument = body.get("argument", "")
                if not isinstance(argument, str):
                    raise ApiError(400, "INVALID_ARGUMENT", "argument must be a JSON string")
                ex = self.engine.create_execution(m.group(1), argument, labels=body.get("labels") or {},
                                                  call_log_level=body.get("callLogLevel", "CALL_LOG_LEVEL_UNSPECIFIED"))
                self._send(200, ex.created)
                return
            if method == "GET":
                state = None
                if query.get("filter"):
                    fm = STATE_FILTER.match(query["filter"])
                    if not fm:
                        raise ApiError(400, "INVALID_ARGUMENT", 'the local engine filters on state="STATE" only')
                    state = fm.group(1)
                found = self.engine.list(m.group(1), state)
                page, token = list_page(found, int(query.get("pageSize", "0") or 0), query.get("pageToken", ""))
                view = query.get("view", "BASIC")
                out: dict[str, Any] = {"executions": [e.to_json(view) for e in page]}
                if token:
                    out["nextPageToken"] = token
                self._send(200, out)
                return
        m = _EXEC.match(path)
        if m:
            if method == "POST" and m.group(2):
                self._body()  # read the (empty) body: left unread, it would prefix the next request on the connection
                self._send(200, self.engine.cancel(m.group(1)).to_json())
                return
            if method == "GET" and not m.group(2):
                self._send(200, self.engine.get(m.group(1)).to_json(query.get("view", "FULL")))
                return
        if path.startswith("/v1/") and "/jobs" in path:
            self._batch_route(method, path, query)
            return
        if path == "/emulator/batch/processes" and method == "GET":
            self._send(200, {"processes": self._batch().processes()})
            return
        if path == "/emulator/batch/preempt" and method == "POST":
            self._send(200, {"preempted": self._batch().preempt(query.get("name", ""))})
            return
        raise ApiError(404, "NOT_FOUND", f"no route {method} {path}")

    def _batch(self) -> LocalBatch:
        if self.batch is None:
            raise ApiError(503, "UNAVAILABLE", "no local Batch runner")
        return self.batch

    def _batch_route(self, method: str, path: str, query: dict[str, str]) -> None:
        batch = self._batch()
        m = _JOBS.match(path)
        if m:
            if method == "POST":
                self._send(200, batch.create_job(m.group(1), query.get("job_id") or query.get("jobId"), self._body()))
                return
            if method == "GET":
                jobs = batch.list_jobs(m.group(1))
                page, token = list_page(jobs, int(query.get("pageSize", "0") or 0), query.get("pageToken", ""))
                out: dict[str, Any] = {"jobs": page}
                if token:
                    out["nextPageToken"] = token
                self._send(200, out)
                return
        m = _JOB.match(path)
        if m:
            if method == "GET":
                self._send(200, batch.get_job(m.group(1)))
                return
            if method == "DELETE":
                self._send(200, batch.delete_job(m.group(1)))
                return
        raise ApiError(404, "NOT_FOUND", f"no route {method} {path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended abruptly", client_address)


class RestServer:
    """A threaded HTTP server for the engine (and its Batch runner) on host:port."""

    def __init__(self, engine: WorkflowsEngine, batch: LocalBatch | None, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"engine": engine, "batch": batch})
        self.httpd = _Server((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="workflows-rest", daemon=True)

    def start(self) -> RestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
