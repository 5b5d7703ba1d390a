"""Faults through the real local stack, from the outside (HTTP APIs, process kills by PID): a soak
of frames-only requests, a killed Batch task, the storage emulator stopped during a stage, the
Workflows engine killed in the middle of an execution.

The stack here is this module's own (the session's `stack` fixture stays healthy for the other
end-to-end tests): short leases (a request whose workflow died is re-run within seconds), dispatch
every second, MAX_CONCURRENT_JOBS=2. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stackclient import StackClient, wait_for

from emulator.processes import pid_alive
from emulator.stack import Stack, StackConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE_SECONDS = 6
MAX_CONCURRENT_JOBS = 2
# 200 by default; SPLATPIPE_SOAK_REQUESTS changes it (a quick local check). Each frames-only
# request costs a few seconds of one job slot (a Python process that decodes 4 frames).
SOAK_REQUESTS = int(os.environ.get("SPLATPIPE_SOAK_REQUESTS", "200"))
SOAK_SECONDS_PER_REQUEST = 12.0  # a loaded 2-core machine measured about 5.5
FRAMES_ONLY = {"preset": "preview", "max_frames": 4}


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, StackClient]]:
    s = Stack(StackConfig(run_dir=tmp_path_factory.mktemp("fault-stack"), max_concurrent_jobs=MAX_CONCURRENT_JOBS,
                          dispatch_every=1.0,
                          extra_env={"LEASE_SECONDS": str(LEASE_SECONDS), "RATE_LIMIT_PER_MINUTE": "100000",
                                     "MAX_ATTEMPTS": "5"}))
    info = s.up(log=lambda msg: None)
    try:
        yield s, StackClient(info)
    finally:
        s.down(quiet=True)


@pytest.fixture(scope="module")
def video(fault_stack: tuple[Stack, StackClient], synthetic_video: dict[str, Path]) -> str:
    _, client = fault_stack
    return client.put_object(client.uploads, "faults/_api/scene.mp4", synthetic_video["video"].read_bytes())


def _pid(stack: Stack, name: str) -> int:
    return int(json.loads((stack.run_dir / "stack.json").read_text())["processes"][name])


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def _enqueue(client: StackClient, video: str, session: str) -> str:
    return client.enqueue({"session_id": session, "input": video, "options": FRAMES_ONLY, "stages": ["frames"]})


def _frames_running(client: StackClient, rid: str) -> bool:
    st = client.status(rid)
    return st["state"] == "PROCESSING" and st["stages"]["frames"]["state"] == "RUNNING"


def _task_of(client: StackClient, rid: str) -> dict[str, Any] | None:
    """The running Batch task attempt of the request's frames job (the engine's process list)."""
    job = client.status(rid)["stages"]["frames"].get("batch_job")
    if not job:
        return None
    for p in client.batch_processes():
        if json.dumps(p).find(job.rsplit("/", 1)[-1]) >= 0:
            return p
    return None


def _assert_frames_outputs_whole(client: StackClient, status: dict[str, Any]) -> None:
    assert status["outputs"], status
    for name, uri in status["outputs"].items():
        blob = client.object(uri)
        assert blob is not None and blob.size > 0, (name, uri)
    report = json.loads(client.read(status["outputs"]["frames_report"]))
    assert isinstance(report, dict) and report
    ws = f"gs://{client.data}/jobs/{status['request_id']}"
    assert json.loads(client.read(f"{ws}/frames/_SUCCESS.json"))


def test_soak_every_request_completes_exactly_once(fault_stack: tuple[Stack, StackClient], video: str) -> None:
    _, client = fault_stack
    before = client.queue_stats()["counts"]
    t0 = time.monotonic()
    ids = [_enqueue(client, video, f"soak-{i}") for i in range(SOAK_REQUESTS)]
    assert len(set(ids)) == SOAK_REQUESTS  # none deduplicated
    final = client.wait(ids, timeout=120 + SOAK_SECONDS_PER_REQUEST * SOAK_REQUESTS / MAX_CONCURRENT_JOBS)
    took = time.monotonic() - t0
    assert {s["state"] for s in final.values()} == {"COMPLETED"}, {
        rid: (s["state"], s.get("error")) for rid, s in final.items() if s["state"] != "COMPLETED"}
    assert all(s["attempts"] == 1 for s in final.values()), "a request was handed out twice"
    runs: dict[str, list[str]] = {}
    for e in client.executions():
        runs.setdefault(json.loads(e["argument"])["request_id"], []).append(e["state"])
    assert all(len(runs.get(rid, [])) == 1 for rid in ids), "a request ran more than one execution"
    stats = client.queue_stats()
    counts = stats["counts"]
    assert counts["COMPLETED"] - before["COMPLETED"] == SOAK_REQUESTS
    assert counts["QUEUED"] == 0 and counts["PROCESSING"] == 0 and stats["running"] == 0
    assert counts["FAILED"] == before["FAILED"]
    print(f"soak: {SOAK_REQUESTS} frames-only requests, MAX_CONCURRENT_JOBS=2, in {took:.0f} s")


def test_a_killed_batch_task_is_retried_and_the_stage_reruns_cleanly(fault_stack: tuple[Stack, StackClient],
                                                                     video: str) -> None:
    _, client = fault_stack
    rid = _enqueue(client, video, "kill-task")
    task = wait_for(lambda: _task_of(client, rid), 120, "a running frames task")
    _kill(int(task["pid"]))
    status = client.wait([rid], timeout=180)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    assert status["stages"]["frames"]["state"] == "SUCCEEDED"
    _assert_frames_outputs_whole(client, status)


def test_storage_stopped_during_a_stage_retries_or_fails_clearly(fault_stack: tuple[Stack, StackClient],
                                                                 video: str) -> None:
    stack, client = fault_stack
    rid = _enqueue(client, video, "storage-down")
    wait_for(lambda: _frames_running(client, rid), 120, "frames RUNNING")
    _kill(_pid(stack, "gcs"))
    time.sleep(3)
    stack.restart("gcs")
    status = client.wait([rid], timeout=240)[rid]
    if status["state"] == "COMPLETED":
        _assert_frames_outputs_whole(client, status)
    else:
        assert status["state"] == "FAILED", status
        err = status["error"]
        assert err["code"] and err["message"] and err["stage"] == "frames", err
        assert status["outputs"] == {}, "a failed stage published outputs"
    # The stack goes on: the next request completes.
    after = _enqueue(client, video, "after-storage-down")
    assert client.wait([after], timeout=120)[after]["state"] == "COMPLETED"


def test_a_killed_workflows_engine_means_a_requeue_and_one_completion(fault_stack: tuple[Stack, StackClient],
                                                                      video: str) -> None:
    stack, client = fault_stack
    completed_before = client.queue_stats()["counts"]["COMPLETED"]
    rid = _enqueue(client, video, "kill-engine")
    wait_for(lambda: _frames_running(client, rid), 120, "frames RUNNING")
    first = client.status(rid)["execution"]
    _kill(_pid(stack, "workflows"))
    time.sleep(LEASE_SECONDS + 1)  # the lease expires while the engine is down
    stack.restart("workflows")
    status = client.wait([rid], timeout=240)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    assert status["attempts"] >= 2 and status["execution"] != first
    _assert_frames_outputs_whole(client, status)
    assert client.queue_stats()["counts"]["COMPLETED"] == completed_before + 1
    succeeded = [e for e in client.settled_executions_of(rid) if e["state"] == "SUCCEEDED"]
    assert len(succeeded) == 1
