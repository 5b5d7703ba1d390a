"""A Memorystore failover, made locally the way Memorystore fails: a primary and a replica
redis-server, replicating asynchronously with no AOF; the primary killed (SIGKILL) under a stream
of accepts, the replica promoted (REPLICAOF NO ONE) and the address the functions dial moved to it
(Memorystore keeps the instance's IP across a failover: a TCP relay here). Before the kill the
replication link is cut for a moment, as a lagging replica: the accepts of that moment are the
ones an asynchronous failover loses.

With `REDIS_REPLICAS_TO_ACK=1` (the accept waits for the replica) no acknowledged request is
lost; without it, the same failover loses some (the control run: the test can fail). After the
failover the promoted node has no replica (Memorystore rebuilds one): the accepts then wait in
vain and Firestore's copy is what makes them acknowledged (functions.intake.accept)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fn_testlib import Buckets, FnApps, TcpProxy, post_json

from emulator import services

ACKNOWLEDGED_GOAL = 500
WORKERS = 8


class Failover:
    """Primary P and replica R (R replicating through a relay, so the link can be cut), and the
    relay the functions dial, which follows the primary."""

    def __init__(self, tmp: Path) -> None:
        self.primary = services.start_redis(tmp, aof=False, name="primary")
        self.replica = services.start_redis(tmp, aof=False, name="replica")
        self.link = TcpProxy(self.primary.port)
        self.link.up()
        self.front = TcpProxy(self.primary.port)
        self.front.up()
        services.replicate(self.replica.port, self.link.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.front.port}/0"

    def fail_over(self) -> None:
        """Kill the primary, promote the replica, move the address to it."""
        os.kill(self.primary.process.pid, signal.SIGKILL)
        self.primary.process.popen.wait(10)
        redis.Redis(port=self.replica.port).replicaof("NO", "ONE")
        self.front.down()
        self.front.target_port = self.replica.port
        self.front.up()

    def stop(self) -> None:
        self.front.down()
        self.link.down()
        for svc in (self.replica, self.primary):
            svc.stop()


@pytest.fixture
def failover(tmp_path: Path) -> Iterator[Failover]:
    f = Failover(tmp_path)
    try:
        yield f
    finally:
        f.stop()


def _accept_through_a_failover(fn_apps: FnApps, buckets: Buckets, failover: Failover, tag: str) -> dict[str, Any]:
    """Accepts from WORKERS threads; after a third of the goal the replication link is cut for
    0.5 s and the primary killed; then on to the goal. The acknowledged ids (202) and latencies."""
    acked: list[str] = []
    tokens: dict[str, str] = {}
    latencies: list[float] = []
    refused = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w: int) -> None:
        client = fn_apps.api.application.test_client()
        for i in range(100_000):  # bounded; `stop` ends it long before
            if stop.is_set():
                return
            t0 = time.perf_counter()
            resp = post_json(client, "/trigger-reconstruction",
                             {"session_id": f"fo-{tag}", "input": f"gs://{buckets.uploads}/fo/{tag}/{w}/{i}.mp4"})
            took = time.perf_counter() - t0
            with lock:
                if resp.status_code == 202:
                    out = resp.get_json()
                    acked.append(out["request_id"])
                    tokens[out["request_id"]] = out["callback_token"]
                    latencies.append(took)
                else:
                    refused[0] += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(acked) < ACKNOWLEDGED_GOAL // 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        failover.link.down()  # the replica lags from here
        time.sleep(0.5)
        at_kill = len(acked)
        failover.fail_over()
        while len(acked) < max(ACKNOWLEDGED_GOAL, at_kill + 100):
            assert time.monotonic() < deadline, f"only {len(acked)} accepted in 120 s ({refused[0]} refused)"
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return {"acked": acked, "tokens": tokens, "latencies": sorted(latencies), "refused": refused[0],
            "at_kill": at_kill}


def _lost(acked: list[str], replica_port: int) -> list[str]:
    r = redis.Redis(port=replica_port, decode_responses=True)
    pipe = r.pipeline(transaction=False)
    for rid in acked:
        pipe.exists(f"sp:req:{rid}")
    return [rid for rid, there in zip(acked, pipe.execute(), strict=True) if not there]


def test_a_failover_loses_no_acknowledged_request(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                  failover: Failover, firestore_host: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    monkeypatch.setenv("REDIS_URL", failover.url)
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "100000000")
    monkeypatch.setenv("REDIS_REPLICAS_TO_ACK", "1")
    monkeypatch.setenv("REDIS_ACK_TIMEOUT_MS", "200")
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "0")  # dispatch below starts nothing, only restores
    run = _accept_through_a_failover(fn_apps, buckets, failover, "wait")
    assert len(run["acked"]) >= ACKNOWLEDGED_GOAL
    # Those Firestore acknowledged while the replica lagged died with the primary; dispatch's pass
    # (Cloud Scheduler's every minute) puts them back from Firestore.
    lost_at_first = _lost(run["acked"], failover.replica.port)
    assert lost_at_first, "no accept was confirmed by Firestore alone: the put-back path went untested"
    assert fn_apps.dispatch.post("/", data="{}", content_type="application/json").status_code == 200
    assert _lost(run["acked"], failover.replica.port) == []
    # The promoted replica answers for every one of them, token included.
    some = run["acked"][:: max(1, len(run["acked"]) // 20)]
    for rid in some:
        body = fn_apps.api.get(f"/status?callback_token={run['tokens'][rid]}").get_json()
        assert body["request_id"] == rid and body["state"] == "QUEUED"
    lat = run["latencies"]
    print(f"\nWAIT 1: {len(run['acked'])} acknowledged, 0 lost ({len(lost_at_first)} put back from Firestore), "
          f"{run['refused']} refused during the failover; "
          f"accept p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms")


def test_without_waiting_for_the_replica_the_same_failover_loses_acknowledged_requests(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, failover: Failover, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", failover.url)
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "100000000")
    monkeypatch.setenv("REDIS_REPLICAS_TO_ACK", "0")
    run = _accept_through_a_failover(fn_apps, buckets, failover, "nowait")
    lost = _lost(run["acked"], failover.replica.port)
    print(f"\nno WAIT: {len(run['acked'])} acknowledged, {len(lost)} lost")
    assert lost, "the control run lost nothing: the failover above does not test what it claims"
    # The lost ones are those acknowledged while the replica lagged, and only those.
    assert set(lost) <= set(run["acked"][ACKNOWLEDGED_GOAL // 3 - WORKERS:run["at_kill"] + WORKERS])


def test_an_accept_neither_copy_confirms_is_withdrawn_and_its_retry_is_a_new_request(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch: pytest.MonkeyPatch, services_now) -> None:
    """No replica answers WAIT and there is no Firestore to write instead: 503, and nothing of the
    request is left (so the retry gets a request of its own, with its callback token)."""
    monkeypatch.setenv("REDIS_REPLICAS_TO_ACK", "1")  # the test Redis has no replica
    monkeypatch.setenv("REDIS_ACK_TIMEOUT_MS", "50")
    body = {"session_id": "wd", "input": f"gs://{buckets.uploads}/wd/v.mp4", "idempotency_key": "k-1"}
    resp = post_json(fn_apps.api, "/trigger-reconstruction", body)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.get_json()["error"]["code"] == "unavailable"
    q = services_now().queue
    assert q.stats()["counts"]["QUEUED"] == 0 and q.outbox() == {} and q.session_requests("wd") == []
    assert not q.r.keys("sp:dedup:*") and not q.r.keys("sp:token:*") and not q.r.keys("sp:req:*")
    monkeypatch.setenv("REDIS_REPLICAS_TO_ACK", "0")
    again = post_json(fn_apps.api, "/trigger-reconstruction", body)
    assert again.status_code == 202 and again.get_json()["callback_token"]
