"""Google Cloud's bad weather in the middle of a running stage, through the real local stack.

While the splat stage trains, the local engine makes the weather the deployed workflow meets
(emulator/workflows/weather.py): for 75 s (more than a poll interval) every call to the queue function answers 503 (a
Memorystore failover behind it, or its instance cap) and Batch's `jobs.get` answers 503 (a Batch
API outage); meanwhile the stage's Spot VM is preempted (exit 50001, retried inside the job as
Batch does). The workflow waits it out (workflows/reconstruct.yaml, run_job's `wait`): the request
ends COMPLETED, each stage's Batch job was created once, and none was deleted while wanted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from stackclient import StackClient, wait_for

from functions.dispatch import batch_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

# Longer than the workflow's poll interval (it backs off to a minute), so the polls surely meet it.
OUTAGE_SECONDS = 75
OPTIONS = {"preset": "preview", "splat_steps": 400, "depth": False, "mesh": False}


def test_a_queue_outage_a_batch_api_outage_and_a_preemption_mid_stage(stack: StackClient,
                                                                       synthetic_video: dict[str, Path]) -> None:
    video = stack.put_object(stack.uploads, "weather/_api/scene.mp4", synthetic_video["video"].read_bytes())
    rid = stack.enqueue({"session_id": "weather", "input": video, "options": OPTIONS})
    pointer = f"gs://{stack.data}/jobs/{rid}/checkpoints/splat/latest.json"
    wait_for(lambda: stack.object(pointer) is not None and json.loads(stack.read(pointer)), 1200, "a splat checkpoint")
    splat_job = stack.status(rid)["stages"]["splat"]["batch_job"]

    try:
        hits_before = stack.weather()["hits"]
        stack.weather({"target": "http", "url_prefix": stack.urls["queue"], "code": 503, "seconds": OUTAGE_SECONDS})
        stack.weather({"target": "batch", "methods": ["get"], "code": 503, "seconds": OUTAGE_SECONDS})
        started = time.monotonic()
        assert stack.preempt(splat_job) == 1
        # The workflow polls at most a minute apart: the faults strike it within the outage.
        wait_for(lambda: stack.weather()["hits"] > hits_before, OUTAGE_SECONDS, "the workflow to meet the weather")
        assert time.monotonic() - started < OUTAGE_SECONDS
    finally:
        stack.clear_weather()

    status = stack.wait([rid], timeout=1200)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    parent = splat_job.rsplit("/jobs/", 1)[0]
    jobs = stack.http.get(f"{stack.batch_url}/v1/{parent}/jobs", timeout=30).json()["jobs"]
    for stage in ("frames", "sfm", "splat"):
        prefix = batch_job.job_id_prefix(stage, rid)
        mine = [j for j in jobs if j["name"].rsplit("/", 1)[1].startswith(prefix)]
        assert len(mine) == 1, (stage, [j["name"] for j in mine])
        assert mine[0]["status"]["state"] == "SUCCEEDED", (stage, mine[0]["status"])
    attempts = stack.batch_attempts(splat_job)
    assert [a["exit_code"] for a in attempts] == [50001, 0], attempts
    assert status["stages"]["splat"]["batch_job"] == splat_job
