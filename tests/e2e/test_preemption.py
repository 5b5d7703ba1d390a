"""A Spot preemption in the middle of the splat stage, through the real local stack.

The local Batch runner preempts the running task (exit code 50001, as Cloud Batch reports a Spot
VM taken back) and retries it inside the same job, as Batch does (no lifecycle policy fails exit
50001: functions.dispatch.batch_job). The splat stage starts again, finds its checkpoint
(`{workspace}/checkpoints/splat/`) and resumes from it. The request completes with one splat job,
and the training lost at most one checkpoint interval.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from stackclient import StackClient, wait_for

from core import stages
from functions.dispatch import batch_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 600
OPTIONS = {"preset": "preview", "splat_steps": STEPS, "depth": False, "mesh": False}
EVERY = int(stages.stage("splat").presets["preview"]["checkpoint_steps"])  # 200


def _last_step(log: Path) -> int:
    """The last training step the attempt's own log reported."""
    steps = [int(m) for m in re.findall(r"\[splat\][^\n]*? step (\d+)/\d+", log.read_text(errors="replace"))]
    return max(steps, default=0)


def test_a_spot_preemption_mid_splat_resumes_from_its_checkpoint(stack: StackClient,
                                                                  synthetic_video: dict[str, Path]) -> None:
    video = stack.put_object(stack.uploads, "preempt/_api/scene.mp4", synthetic_video["video"].read_bytes())
    rid = stack.enqueue({"session_id": "preempt", "input": video, "options": OPTIONS})
    pointer = f"gs://{stack.data}/jobs/{rid}/checkpoints/splat/latest.json"

    first = wait_for(lambda: stack.object(pointer) is not None and json.loads(stack.read(pointer)), 1200,
                      "a splat checkpoint")
    job = stack.status(rid)["stages"]["splat"]["batch_job"]
    assert stack.preempt(job) == 1
    status = stack.wait([rid], timeout=1200)[rid]
    assert status["state"] == "COMPLETED", status.get("error")

    # One splat job: the preemption was retried inside it, not by a second job.
    parent = job.rsplit("/jobs/", 1)[0]
    jobs = stack.http.get(f"{stack.batch_url}/v1/{parent}/jobs", timeout=30).json()["jobs"]
    prefix = batch_job.job_id_prefix("splat", rid)
    mine = [j["name"] for j in jobs if j["name"].rsplit("/", 1)[1].startswith(prefix)]
    assert mine == [job], mine
    attempts = stack.batch_attempts(job)
    assert [a["exit_code"] for a in attempts] == [50001, 0], attempts

    m = status["metrics"]["splat"]
    resumed = int(m["resumed_from_step"])
    assert m["steps"] == STEPS and resumed == first["step"], (first, m)
    # How far the preempted attempt got: its last progress line (written at most once a second,
    # batch_jobs/progress.py), plus what a second of training adds, and at least its checkpoint.
    killed_at = max(_last_step(Path(attempts[0]["log"])), resumed) + math.ceil(float(m["steps_per_s"])) + 1
    # The training lost to the preemption is what came after the last checkpoint.
    trained = killed_at + (STEPS - resumed)
    assert trained <= STEPS + EVERY, (killed_at, resumed)
    assert f"resuming from the checkpoint at step {resumed}" in Path(attempts[1]["log"]).read_text()
    print(f"\npreempted by step {killed_at} at the latest, resumed from {resumed}: {trained} steps trained for "
          f"{STEPS}; checkpoints {m['checkpoints']}, last {m['checkpoint_mb']} MB, {m['checkpoint_seconds']} s in all")
    assert stack.object(pointer) is None  # spent once the stage succeeded
