"""HTTP/JSON front of the local engine's process: the Batch jobs REST subset and local-only routes.

Batch (`https://batch.googleapis.com` paths), at `BATCH_EMULATOR_HOST`:
  POST /v1/projects/{p}/locations/{l}/jobs?job_id=ID   GET …/jobs   GET|DELETE …/jobs/{id}
Local only: GET /healthz, GET /emulator/batch/processes (running task attempts with PIDs),
POST /emulator/batch/{job name}:preempt (a Spot preemption of the job's running tasks: exit 50001,
then Batch's own task retry), GET /emulator/batch/{job name}/attempts (every task attempt),
POST|GET|DELETE /emulator/weather (make, list or end faults of the engine's calls: weather.py).
Errors are Google API errors: `{"error": {"code", "message", "status"}}`. The Executions API is
gRPC only (grpc_api.py), as google-cloud-workflows' client speaks it.
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
from emulator.workflows.weather import Weather, parse_fault

log = logging.getLogger("emulator.workflows.rest")

_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/jobs$")
_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/jobs/[^/:]+)$")
_LOCAL_JOB = re.compile(r"^/emulator/batch/(projects/[^/]+/locations/[^/]+/jobs/[^/:]+)(:preempt|/attempts)$")
MAX_BODY = 1 << 20


def list_page(items: list[Any], page_size: int, token: str) -> tuple[list[Any], str]:
    start = int(token) if token.isdigit() else 0
    size = page_size if page_size > 0 else 100
    end = start + min(size, 1000)
    return items[start:end], (str(end) if end < len(items) else "")


class _Handler(BaseHTTPRequestHandler):
    batch: LocalBatch
    weather: Weather
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
            raise BatchApiError(413, "INVALID_ARGUMENT", "request body too large")
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BatchApiError(400, "INVALID_ARGUMENT", f"request body is not JSON: {exc}") from None

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            self._route(method, url.path, query)
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
        if path == "/emulator/weather":
            if method == "POST":
                try:
                    self.weather.add(parse_fault(self._body()))
                except (ValueError, TypeError, AttributeError) as exc:
                    raise BatchApiError(400, "INVALID_ARGUMENT", str(exc)) from None
            elif method == "DELETE":
                self.weather.clear()
            self._send(200, {"faults": [f.to_json() for f in self.weather.active()], "hits": self.weather.hits})
            return
        if path == "/emulator/batch/processes" and method == "GET":
            self._send(200, {"processes": self.batch.processes()})
            return
        m = _LOCAL_JOB.match(path)
        if m and m.group(2) == ":preempt" and method == "POST":
            self._send(200, {"preempted": self.batch.preempt(m.group(1))})
            return
        if m and m.group(2) == "/attempts" and method == "GET":
            self._send(200, {"attempts": self.batch.attempts(m.group(1))})
            return
        m = _JOBS.match(path)
        if m and method == "POST":
            self._send(200, self.batch.create_job(m.group(1), query.get("job_id") or query.get("jobId"), self._body()))
            return
        if m and method == "GET":
            jobs = self.batch.list_jobs(m.group(1))
            page, token = list_page(jobs, int(query.get("pageSize", "0") or 0), query.get("pageToken", ""))
            self._send(200, {"jobs": page, **({"nextPageToken": token} if token else {})})
            return
        m = _JOB.match(path)
        if m and method == "GET":
            self._send(200, self.batch.get_job(m.group(1)))
            return
        if m and method == "DELETE":
            self._send(200, self.batch.delete_job(m.group(1)))
            return
        raise BatchApiError(404, "NOT_FOUND", f"no route {method} {path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended abruptly", client_address)


class RestServer:
    """A threaded HTTP server for the local Batch runner on host:port."""

    def __init__(self, batch: LocalBatch, host: str = "127.0.0.1", port: int = 0,
                 weather: Weather | None = None) -> None:
        handler = type("Handler", (_Handler,), {"batch": batch, "weather": weather or Weather()})
        self.httpd = _Server((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="workflows-rest", daemon=True)

    def start(self) -> RestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
