"""A trigger is the one atomic Redis script: an outage of Firestore, Cloud Storage or dispatch adds
no latency to it, and nothing it accepted is lost (the outbox and dispatch catch up)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fn_testlib import PROJECT, Buckets, FnApps, RecordingServer, post_json, trigger_body

from core import gcs
from functions.dispatch import admission as dispatcher

FAST = 0.25  # s: what one accepted trigger may take here (the Redis scripts take about 1 ms)


class Blackhole:
    """A TCP server that accepts connections and never answers: a hung dependency (the worst kind
    of outage for a client: no refusal, only its own deadline ends the wait)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    b = Blackhole()
    yield b
    b.close()


def _timed_triggers(fn_apps: FnApps, buckets: Buckets, n: int, first: int = 0) -> tuple[list[str], float]:
    ids, worst = [], 0.0
    for i in range(first, first + n):
        t0 = time.monotonic()
        resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, i))
        worst = max(worst, time.monotonic() - t0)
        assert resp.status_code == 202, resp.get_data(as_text=True)
        ids.append(resp.get_json()["request_id"])
    return ids, worst


class FakeExecutor:
    """The Workflows boundary of dispatch (the unit under test is dispatch, not Workflows)."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []

    def start(self, argument: Any) -> str:
        self.started.append(dict(argument))
        return f"projects/p/locations/l/workflows/w/executions/e{len(self.started)}"

    def state(self, execution: str) -> str | None:
        return "ACTIVE"

    def cancel(self, execution: str) -> None:
        pass


def test_a_hung_firestore_adds_no_latency_to_triggers_or_dispatch(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                                 blackhole: Blackhole, monkeypatch,
                                                                 services_now) -> None:
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", blackhole.host)
    ids, worst = _timed_triggers(fn_apps, buckets, 5)
    assert worst < FAST, f"a trigger took {worst:.3f} s with Firestore hung"
    svc = services_now()
    for _ in range(3):  # every dispatch pass, not only the first, is bounded
        t0 = time.monotonic()
        out = dispatcher.run(svc, FakeExecutor())
        took = time.monotonic() - t0
        assert took < 2.0, f"a dispatch pass took {took:.2f} s with Firestore hung"
    assert out["running"] == 2
    t0 = time.monotonic()
    for rid in ids:
        assert fn_apps.queue.get(f"/status/{rid}").status_code == 200
    assert time.monotonic() - t0 < 5 * FAST
    assert set(svc.queue.outbox()) == set(ids)  # every change still waits in the outbox


def test_a_hung_dispatch_adds_no_latency_to_triggers(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                    monkeypatch) -> None:
    def slow(method: str, path: str, body: bytes) -> tuple[int, dict]:
        time.sleep(3)
        return 200, {"started": [], "requeued": [], "running": 0, "max": 2}

    with RecordingServer(slow) as srv:
        monkeypatch.setenv("DISPATCH_URL", f"http://{srv.host}/")
        _, worst = _timed_triggers(fn_apps, buckets, 5)
        assert worst < FAST, f"a trigger took {worst:.3f} s with dispatch hung"
        deadline = time.monotonic() + 5
        while not srv.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        # Pokes go out, but five triggers in a burst need far fewer than five.
        assert 1 <= len(srv.requests) <= 3


def test_a_hung_storage_adds_no_latency_and_request_json_is_there_before_the_start(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, blackhole: Blackhole, monkeypatch, services_now) -> None:
    real = gcs.uses_emulator() and __import__("os").environ["STORAGE_EMULATOR_HOST"]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{blackhole.host}")
    ids, worst = _timed_triggers(fn_apps, buckets, 3)
    assert worst < FAST, f"a trigger took {worst:.3f} s with Cloud Storage hung"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", real)
    ex = FakeExecutor()
    out = dispatcher.run(services_now(), ex)
    assert out["started"] == ids[:2]
    for rid in out["started"]:
        blob = gcs.client(PROJECT).bucket(buckets.data).blob(f"jobs/{rid}/request.json")
        assert json.loads(blob.download_as_bytes())["request_id"] == rid
