"""Fixtures for the local Workflows engine and Batch runner tests.

`run_workflow` deploys a definition in an in-process engine and runs it to the end. `http_server`
is a real HTTP server on 127.0.0.1 whose answers a test scripts (the far side of `http.*` calls,
of the queue function's PUT /status, of a webhook) and which records every request.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from emulator.batch.runner import LocalBatch
from emulator.workflows.connectors import LocalConnectors
from emulator.workflows.executions import Execution, WorkflowsEngine


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpServer:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    # path -> queue of (status, json body); the last one repeats. Default: 200 {"ok": true}.
    answers: dict[str, deque[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(deque))
    delay: dict[str, float] = field(default_factory=dict)

    def answer(self, path: str, *responses: tuple[int, Any]) -> None:
        self.answers[path] = deque(responses)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method)
                and (path is None or r.path.split("?")[0] == path)]


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    state = HttpServer(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            path = self.path.split("?")[0]
            with lock:
                state.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
                q = state.answers.get(path)
                code, payload = (q.popleft() if len(q) > 1 else q[0]) if q else (200, {"ok": True})
            if path in state.delay:
                threading.Event().wait(state.delay[path])
            data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes)
                             else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815 - http.server names

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients that time out on purpose reset their connections

    srv = Server(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    state.url = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield state
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def local_batch(tmp_path: Path) -> Iterator[LocalBatch]:
    # Stages in these tests report progress to the log only (no Firestore here).
    batch = LocalBatch(tmp_path / "batch", env={"SPLATPIPE_STATUS_STORE": "log"})
    yield batch
    batch.shutdown()


@pytest.fixture
def engine(local_batch: LocalBatch) -> Iterator[WorkflowsEngine]:
    eng = WorkflowsEngine(LocalConnectors(local_batch))
    yield eng
    eng.cancel_all()


RunWorkflow = Callable[..., Execution]


@pytest.fixture
def run_workflow(engine: WorkflowsEngine) -> RunWorkflow:
    """run_workflow(yaml, argument=None, env=None, timeout=30) -> the finished Execution."""
    counter = iter(range(10**6))

    def run(source: str, argument: Any = None, env: Mapping[str, str] | None = None, timeout: float = 30,
            wait: bool = True) -> Execution:
        wid = f"wf{next(counter)}"
        engine.deploy(wid, source, env or {})
        ex = engine.create_execution(wid, json.dumps(argument) if argument is not None else "")
        if wait:
            assert ex.done.wait(timeout), f"execution still {ex.state} after {timeout}s at {ex.rt.current}"
        return ex

    return run

