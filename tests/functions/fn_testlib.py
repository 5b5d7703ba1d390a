"""Helpers of the control-plane tests (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask.testing import FlaskClient

from emulator.services import DEFAULT_PROJECT as PROJECT  # noqa: F401  (re-exported to the tests)

if TYPE_CHECKING:
    from emulator.workflows.server import EngineServer

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_MAIN = REPO / "functions" / "main.py"



@dataclass
class Buckets:
    uploads: str
    data: str


@dataclass
class FnApps:
    api: FlaskClient
    queue: FlaskClient
    on_upload: FlaskClient
    dispatch: FlaskClient


def trigger_body(buckets: Buckets, n: int = 0, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"session_id": "sess-1", "input": f"gs://{buckets.uploads}/sess-1/video{n}.mp4"}
    body.update(extra)
    return body


def post_json(client: FlaskClient, path: str, body: Any, **kw: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def put_json(client: FlaskClient, path: str, body: Any, **kw: Any) -> Any:
    return client.put(path, data=json.dumps(body), content_type="application/json", **kw)


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    err = resp.get_json()["error"]
    assert set(err) == {"code", "message"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


class RecordingServer:
    """A small HTTP server on 127.0.0.1 that records requests and answers with `respond`.

    `respond(method, path, body_bytes) -> (status, json_body)`. Use as a context manager.
    """

    def __init__(self, respond: Any) -> None:
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.respond = respond
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path, body, dict(self.headers)))
                status, payload = outer.respond(self.command, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any  # noqa: N815  (http.server names)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


SLEEPER = """
main:
  params: [args]
  steps:
    - wait:
        call: sys.sleep
        args:
          seconds: ${default(map.get(args, "sleep"), 0)}
"""


@contextlib.contextmanager
def local_engine(run_dir: Path) -> Iterator[EngineServer]:
    """The local Workflows engine serving `reconstruct`, a workflow that only sleeps its argument's
    `sleep` seconds."""
    from emulator.workflows.server import EngineServer

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sleeper.yaml").write_text(SLEEPER)
    srv = EngineServer(run_dir / "engine", {"reconstruct": run_dir / "sleeper.yaml"}).start()
    try:
        yield srv
    finally:
        srv.stop()


class TcpProxy:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target that can go down and come back on the same
    port: a server outage as its clients see it (refused connections, reset streams)."""

    def __init__(self, target_port: int) -> None:
        from emulator.processes import free_port

        self.target_port = target_port
        self.port = free_port()
        self._listener: Any = None
        self._conns: list[Any] = []
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: Any) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def down(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, on Linux.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
