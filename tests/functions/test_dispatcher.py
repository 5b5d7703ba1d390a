"""dispatch: admission control, lease expiry, and the executor (a fake at its unit boundary; the
real one, google-cloud-workflows' client, against the local Workflows engine)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fn_testlib import PROJECT, Buckets, FnApps, RecordingServer, local_engine, post_json, put_json

from core import gcs
from emulator.processes import free_port
from emulator.workflows.server import EngineServer
from functions.config import Settings
from functions.dispatch import admission as dispatcher
from functions.dispatch.executions import NOT_FOUND, Executor, ExecutorError


class FakeExecutor:
    """Starts nothing: records arguments, answers states it is told."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.states: dict[str, str] = {}
        self.cancelled: list[str] = []
        self.fail = False
        self._lock = threading.Lock()

    def start(self, argument: dict[str, Any]) -> str:
        if self.fail:
            raise ExecutorError("workflows unavailable")
        with self._lock:
            self.started.append(dict(argument))
            name = f"projects/{PROJECT}/locations/us-central1/workflows/reconstruct/executions/e{len(self.started)}"
        self.states[name] = "ACTIVE"
        return name

    def state(self, execution: str) -> str:
        return self.states.get(execution, NOT_FOUND)

    def cancel(self, execution: str) -> None:
        self.cancelled.append(execution)
        self.states[execution] = "CANCELLED"


def _enqueue(fn_apps: FnApps, buckets: Buckets, n: int, priority: int = 5, **extra: Any) -> str:
    body = {"session_id": "dsp", "priority": priority, "input": f"gs://{buckets.uploads}/dsp/{n}.mp4", **extra}
    resp = post_json(fn_apps.queue, "/enqueue", body)
    assert resp.status_code == 202
    return resp.get_json()["request_id"]


def test_starts_up_to_the_limit_in_priority_order(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                   services_now) -> None:
    ids = [_enqueue(fn_apps, buckets, i, p, **({"webhook_url": "https://example.com/h"} if i == 2 else {}))
           for i, p in enumerate([5, 2, 0, 5, 9])]
    ex = FakeExecutor()
    svc = services_now()
    out = dispatcher.run(svc, ex)
    assert out == {"started": [ids[2], ids[1]], "requeued": [], "running": 2, "max": 2}
    arg = ex.started[0]
    jobs = arg.pop("jobs")
    assert arg == {"request_id": ids[2], "workspace": f"gs://{buckets.data}/jobs/{ids[2]}",
                   "input": f"gs://{buckets.uploads}/dsp/2.mp4", "options": {"preset": "standard"}, "priority": 0,
                   "stages": ["frames", "sfm", "depth", "splat", "mesh"], "disabled": [],
                   "batch_parent": f"projects/{PROJECT}/locations/us-central1",
                   "webhook_url": "https://example.com/h"}
    assert list(jobs) == arg["stages"]  # each stage's Job body: tests/functions/test_batch_job.py
    assert jobs["frames"]["job"]["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]["commands"] == [
        "run", "frames", "--workspace", arg["workspace"], "--request-id", ids[2]]
    assert "webhook_url" not in ex.started[1]
    rec = svc.queue.get(ids[2])
    assert rec.state == "PROCESSING" and rec.execution.endswith("/e1")
    # The execution is recorded, so the lease is the full LEASE_SECONDS, not the short start lease.
    assert rec.lease_expires_at - rec.updated_at == 21600 * 1000
    assert dispatcher.run(svc, ex)["started"] == []  # at the limit
    put_json(fn_apps.queue, f"/status/{ids[2]}", {"state": "COMPLETED", "outputs": {"ply": "gs://d/x.ply"}})
    out = dispatcher.run(svc, ex)
    assert out["started"] == [ids[0]] and out["running"] == 2


def test_request_json_is_written_before_the_start(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                services_now) -> None:
    rid = _enqueue(fn_apps, buckets, 1)
    blob = gcs.client(PROJECT).bucket(buckets.data).blob(f"jobs/{rid}/request.json")
    assert not blob.exists()  # accepting does not write it (it stays off the request path)
    dispatcher.run(services_now(), FakeExecutor())
    assert json.loads(blob.download_as_bytes())["request_id"] == rid


def test_executor_failure_puts_the_request_back(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                services_now) -> None:
    a, b = _enqueue(fn_apps, buckets, 1, 1), _enqueue(fn_apps, buckets, 2, 2)
    ex = FakeExecutor()
    ex.fail = True
    svc = services_now()
    out = dispatcher.run(svc, ex)
    assert out["started"] == [] and out["running"] == 0
    rec = svc.queue.get(a)
    assert rec.state == "QUEUED" and rec.attempts == 0
    ex.fail = False
    assert dispatcher.run(svc, ex)["started"] == [a, b]


def test_expired_lease_requeued_once_or_renewed_while_running(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                              monkeypatch, services_now) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "1")
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "1")
    alive, dead = _enqueue(fn_apps, buckets, 1, 0), _enqueue(fn_apps, buckets, 2, 1)
    svc = services_now()
    ex = FakeExecutor()
    assert dispatcher.run(svc, ex)["started"] == [alive]
    time.sleep(1.2)
    # Its execution still runs: the lease is renewed, nothing else starts.
    out = dispatcher.run(svc, ex)
    assert out["requeued"] == [] and out["started"] == [] and svc.queue.get(alive).state == "PROCESSING"
    # The execution died without telling us: re-queued, by exactly one of many concurrent dispatches.
    ex.states[svc.queue.get(alive).execution] = "FAILED"
    time.sleep(1.2)
    results: list[dict] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        results.append(dispatcher.run(svc, ex))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    requeued = [rid for r in results for rid in r["requeued"]]
    started = [rid for r in results for rid in r["started"]]
    assert requeued == [alive]
    assert started == [alive]  # back at its place ahead of `dead`, and started again (limit 1)
    rec = svc.queue.get(alive)
    assert rec.attempts == 2 and rec.execution.endswith("/e2")
    assert svc.queue.get(dead).state == "QUEUED"


def test_too_many_expiries_fail_the_request(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch,
                                            services_now) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "1")
    monkeypatch.setenv("MAX_ATTEMPTS", "2")
    rid = _enqueue(fn_apps, buckets, 1)
    for _ in range(2):
        assert fn_apps.queue.get("/next").get_json()["request_id"] == rid  # a worker that vanishes
        time.sleep(1.15)
        dispatcher.requeue_expired(services_now(), FakeExecutor())
    doc = fn_apps.queue.get(f"/status/{rid}").get_json()
    assert doc["state"] == "FAILED" and doc["error"]["code"] == "lease_expired"


def test_cancelled_between_take_and_start_cancels_the_execution(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                                 services_now) -> None:
    rid = _enqueue(fn_apps, buckets, 1)
    svc = services_now()

    class CancellingExecutor(FakeExecutor):
        def start(self, argument: dict[str, Any]) -> str:
            name = super().start(argument)
            put_json(fn_apps.queue, f"/status/{argument['request_id']}", {"state": "CANCELLED"})
            return name

    ex = CancellingExecutor()
    dispatcher.run(svc, ex)
    assert len(ex.started) == 1
    assert ex.cancelled == [f"projects/{PROJECT}/locations/us-central1/workflows/reconstruct/executions/e1"]
    assert svc.queue.get(rid).state == "CANCELLED"


# --- the executor ---------------------------------------------------------------------------------

@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineServer]:
    with local_engine(tmp_path) as srv:
        yield srv


def _local(host: str) -> Settings:
    return Settings(project="splatpipe-local", region="us-central1", workflow_name="reconstruct",
                    workflows_emulator_host=host)


def test_executor_speaks_the_executions_api(engine: EngineServer) -> None:
    ex = Executor(_local(engine.host))
    name = ex.start({"request_id": "r1", "stages": ["frames"], "sleep": 30})
    assert name.startswith("projects/splatpipe-local/locations/us-central1/workflows/reconstruct/executions/")
    # The argument is a JSON *string* in the Execution, as the Executions API wants it.
    assert json.loads(engine.engine.get(name).argument) == {"request_id": "r1", "stages": ["frames"], "sleep": 30}
    assert ex.state(name) == "ACTIVE"
    ex.cancel(name)
    assert ex.state(name) == "CANCELLED"
    assert ex.state(name + "-missing") == NOT_FOUND  # an explicit answer, not an error
    with pytest.raises(ExecutorError):
        ex.cancel(name + "-missing")
    engine.stop()
    with pytest.raises(ExecutorError):  # the engine is gone
        ex.start({"request_id": "r2"})
    with pytest.raises(ExecutorError):  # unknown, not "not running"
        ex.state(name)


def test_gcp_executor_is_the_executions_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.workflows import executions_v1

    settings = Settings(project="p1", region="europe-west4", workflow_name="wf")
    ex = Executor(settings, client=executions_v1.ExecutionsClient(credentials=AnonymousCredentials()))
    assert ex.parent == "projects/p1/locations/europe-west4/workflows/wf"
    assert isinstance(ex.client(), executions_v1.ExecutionsClient)
    # No credentials: making the client fails on first use, as an ExecutorError.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    with pytest.raises(ExecutorError):
        Executor(settings).state("projects/p1/locations/europe-west4/workflows/wf/executions/e1")


def test_unreachable_workflows_leaves_an_expired_request_processing(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch, services_now, caplog) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "1")
    rid, other = _enqueue(fn_apps, buckets, 1), _enqueue(fn_apps, buckets, 2)
    svc = services_now()
    assert dispatcher.run(svc, FakeExecutor())["started"] == [rid, other]
    time.sleep(1.2)
    unreachable = Executor(_local(f"127.0.0.1:{free_port()}"))
    asked: list[str] = []
    real_state = unreachable.state
    monkeypatch.setattr(unreachable, "state", lambda name: asked.append(name) or real_state(name))
    with caplog.at_level(logging.WARNING, logger="splatpipe.dispatch"):
        assert dispatcher.requeue_expired(svc, unreachable) == []
    for r in (rid, other):
        rec = svc.queue.get(r)
        assert rec.state == "PROCESSING" and rec.attempts == 1
    assert "lease expired but the state of execution" in caplog.text
    # Workflows could not answer once: the other lease is not asked about in the same pass (each
    # question would wait out its deadline and hold up the pass's starts and mirroring).
    assert len(asked) == 1
    # Once Workflows answers that the executions are gone, the requests go back to the queue.
    assert sorted(dispatcher.requeue_expired(svc, FakeExecutor())) == sorted([rid, other])


def test_dispatch_function_starts_executions_on_the_local_engine(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                                  monkeypatch, engine: EngineServer) -> None:
    monkeypatch.setenv("WORKFLOWS_EMULATOR_HOST", engine.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "splatpipe-local")
    rid = _enqueue(fn_apps, buckets, 1)
    resp = fn_apps.dispatch.post("/", data="{}", content_type="application/json")
    assert resp.status_code == 200
    assert resp.get_json() == {"started": [rid], "requeued": [], "running": 1, "max": 2}
    (ex,) = engine.engine.list(engine.engine.workflow_name("reconstruct"))
    assert json.loads(ex.argument)["request_id"] == rid
    assert fn_apps.queue.get(f"/status/{rid}").get_json()["execution"] == ex.name
    assert fn_apps.dispatch.get("/").get_json()["started"] == []  # GET works too


def test_a_burst_of_pokes_is_a_few_spaced_pokes_and_the_last_follows_the_burst() -> None:
    """200 enqueues in a second: a poke at most every MIN_INTERVAL, and one after the last."""
    import itertools
    import time

    from functions.dispatch import kick as dispatch_kick

    times: list[float] = []
    with RecordingServer(lambda m, p, b: (times.append(time.monotonic()) or (200, {}))) as srv:
        kick = dispatch_kick.DispatchKick(f"http://{srv.host}/")
        t0 = time.monotonic()
        for _ in range(200):
            kick()
            time.sleep(0.005)
        last_enqueue = time.monotonic()
        assert kick.idle(5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 2 <= len(times) <= (last_enqueue - t0) / dispatch_kick.MIN_INTERVAL + 2, times
    assert all(g >= dispatch_kick.MIN_INTERVAL * 0.9 for g in gaps), gaps
    assert times[-1] >= last_enqueue - 0.01  # the enqueues at the end of the burst were poked for


def test_api_pokes_dispatch_after_an_enqueue(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch,
                                             services_now) -> None:
    with RecordingServer(lambda m, p, b: (200, {"started": [], "requeued": [], "running": 0, "max": 2})) as srv:
        monkeypatch.setenv("DISPATCH_URL", f"http://{srv.host}/")
        assert post_json(fn_apps.api, "/trigger-reconstruction",
                         {"session_id": "k", "input": f"gs://{buckets.uploads}/k/v.mp4"}).status_code == 202
        assert services_now().kick.idle(5)  # the poke goes out from a background thread
        assert [(m, p) for m, p, _, _ in srv.requests] == [("POST", "/")]
        # A duplicate enqueues nothing, so it pokes nothing.
        post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "k", "input": f"gs://{buckets.uploads}/k/v.mp4"})
        assert services_now().kick.idle(5)
        assert len(srv.requests) == 1
    # Dispatch unreachable: the trigger still succeeds.
    assert post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "k", "input": f"gs://{buckets.uploads}/k/w.mp4"}).status_code == 202
