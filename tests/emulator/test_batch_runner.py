"""The local Cloud Batch runner: the Job JSON in, real local processes out."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from emulator.batch.runner import EXIT_MAX_RUN_DURATION, EXIT_PREEMPTED, BatchApiError, LocalBatch

PARENT = "projects/splatpipe-local/locations/us-central1"


def job(script: str, *, task_count: int = 1, parallelism: int | None = None, retries: int = 0,
        max_run: str | None = None, lifecycle: list[dict[str, Any]] | None = None,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"runnables": [{"script": {"text": script}}], "maxRetryCount": retries}
    if max_run:
        spec["maxRunDuration"] = max_run
    if lifecycle:
        spec["lifecyclePolicies"] = lifecycle
    if env:
        spec["environment"] = {"variables": env}
    group: dict[str, Any] = {"taskCount": task_count, "taskSpec": spec}
    if parallelism:
        group["parallelism"] = parallelism
    return {"taskGroups": [group], "labels": {"request_id": "r1"}, "logsPolicy": {"destination": "CLOUD_LOGGING"}}


def run(batch: LocalBatch, job_id: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    created = batch.create_job(PARENT, job_id, body)
    assert created["status"]["state"] in ("QUEUED", "SCHEDULED", "RUNNING")
    done = batch.wait_job(created["name"], timeout)
    assert done["status"]["state"] in ("SUCCEEDED", "FAILED"), done["status"]
    return done


def states(job_doc: dict[str, Any]) -> list[str]:
    out = []
    for e in job_doc["status"]["statusEvents"]:
        d = e["description"]
        if d.startswith("Job state is set"):
            out.append(d.split(" to ")[1].split(" ")[0])
    return out


def exit_codes(job_doc: dict[str, Any]) -> list[int]:
    return [e["taskExecution"]["exitCode"] for e in job_doc["status"]["statusEvents"] if "taskExecution" in e]


def test_job_lifecycle_and_environment(local_batch: LocalBatch, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = ("python3 -c 'import json,os; json.dump({k: os.environ.get(k) for k in "
              "[\"BATCH_TASK_INDEX\",\"BATCH_TASK_COUNT\",\"BATCH_JOB_ID\",\"BATCH_TASK_RETRY_ATTEMPT\",\"MINE\","
              f"\"SPLATPIPE_STATUS_STORE\",\"PATH\"]}}, open(\"{out}\",\"w\"))'; echo to the log")
    done = run(local_batch, "env-job", job(script, env={"MINE": "job value"}))
    assert done["status"]["state"] == "SUCCEEDED"
    assert states(done) == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    env = json.loads(out.read_text())
    assert env["BATCH_TASK_INDEX"] == "0" and env["BATCH_TASK_COUNT"] == "1" and env["BATCH_JOB_ID"] == "env-job"
    assert env["BATCH_TASK_RETRY_ATTEMPT"] == "0" and env["MINE"] == "job value"
    assert env["SPLATPIPE_STATUS_STORE"] == "log" and env["PATH"]  # the runner's env is inherited
    assert done["status"]["taskGroups"]["group0"]["counts"] == {"SUCCEEDED": "1"}
    assert done["taskGroups"][0]["name"] == f"{PARENT}/jobs/env-job/taskGroups/group0"
    (attempt,) = local_batch.attempts(done["name"])
    assert "to the log" in Path(attempt["log"]).read_text() and attempt["exit_code"] == 0


def test_task_count_and_parallelism(local_batch: LocalBatch, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = (f'echo start $(date +%s.%N) > {marks}/$BATCH_TASK_INDEX; sleep 0.6; '
              f'echo end $(date +%s.%N) >> {marks}/$BATCH_TASK_INDEX')
    done = run(local_batch, "fan-out", job(script, task_count=5, parallelism=2))
    assert done["status"]["state"] == "SUCCEEDED"
    spans = []
    for f in marks.iterdir():
        lines = f.read_text().split()
        spans.append((float(lines[1]), float(lines[3])))
    assert len(spans) == 5
    # never more than 2 at once
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_retries_until_success_then_logs_per_attempt(local_batch: LocalBatch) -> None:
    done = run(local_batch, "flaky", job('echo attempt $BATCH_TASK_RETRY_ATTEMPT; '
                                         '[ "$BATCH_TASK_RETRY_ATTEMPT" -ge 2 ] || exit 1', retries=3))
    assert done["status"]["state"] == "SUCCEEDED"
    attempts = local_batch.attempts(done["name"])
    assert [a["exit_code"] for a in attempts] == [1, 1, 0]
    assert [Path(a["log"]).name for a in attempts] == ["task0-attempt0.log", "task0-attempt1.log", "task0-attempt2.log"]
    assert "attempt 1" in Path(attempts[1]["log"]).read_text()
    assert exit_codes(done) == [1, 1, 0]


def test_retries_run_out(local_batch: LocalBatch) -> None:
    done = run(local_batch, "always-fails", job("exit 1", retries=2))
    assert done["status"]["state"] == "FAILED" and len(local_batch.attempts(done["name"])) == 3
    assert states(done)[-1] == "FAILED"


def test_lifecycle_policy_fails_bad_input_without_retry(local_batch: LocalBatch) -> None:
    policy = [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [3]}}]
    done = run(local_batch, "bad-input", job("exit 3", retries=5, lifecycle=policy))
    assert done["status"]["state"] == "FAILED" and len(local_batch.attempts(done["name"])) == 1
    retried = run(local_batch, "other-code", job('[ "$BATCH_TASK_RETRY_ATTEMPT" = 1 ] || exit 1', retries=5,
                                                 lifecycle=policy))
    assert retried["status"]["state"] == "SUCCEEDED" and len(local_batch.attempts(retried["name"])) == 2


def test_max_run_duration_kills_the_task(local_batch: LocalBatch, tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    t0 = time.monotonic()
    done = run(local_batch, "too-slow", job(f"sleep 30 & echo $! > {child_pid}; wait", max_run="1s"))
    assert time.monotonic() - t0 < 15
    assert done["status"]["state"] == "FAILED" and exit_codes(done) == [EXIT_MAX_RUN_DURATION]
    pid = int(child_pid.read_text())
    # The whole process group went, children too. The orphaned child is reaped by init, so it may
    # linger as a zombie for a moment: poll, and count a zombie as gone.
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def test_a_killed_task_process_is_retried(local_batch: LocalBatch, tmp_path: Path) -> None:
    body = job('[ "$BATCH_TASK_RETRY_ATTEMPT" = 1 ] && exit 0; sleep 30', retries=2)
    created = local_batch.create_job(PARENT, "killed", body)
    deadline = time.monotonic() + 20
    while not local_batch.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    (proc,) = local_batch.processes()
    os.kill(proc["pid"], signal.SIGKILL)
    done = local_batch.wait_job(created["name"], 30)
    assert done["status"]["state"] == "SUCCEEDED"
    assert [a["exit_code"] for a in local_batch.attempts(created["name"])] == [128 + signal.SIGKILL, 0]


def test_preemption_ends_attempts_with_50001(local_batch: LocalBatch) -> None:
    created = local_batch.create_job(PARENT, "spot", job('[ "$BATCH_TASK_RETRY_ATTEMPT" = 1 ] && exit 0; sleep 30',
                                                         retries=1))
    deadline = time.monotonic() + 20
    while not local_batch.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local_batch.preempt(created["name"]) == 1
    done = local_batch.wait_job(created["name"], 30)
    assert done["status"]["state"] == "SUCCEEDED" and exit_codes(done) == [EXIT_PREEMPTED, 0]


def test_container_runnable_runs_the_installed_job_image_entrypoint(local_batch: LocalBatch, tmp_path: Path) -> None:
    # The job image's ENTRYPOINT is `python -m batch_jobs`: locally this installation's.
    body = {"taskGroups": [{"taskSpec": {
        "runnables": [{"container": {"imageUri": "REGION-docker.pkg.dev/p/r/splatpipe-job:latest",
                                     "commands": ["run", "frames", "--workspace", str(tmp_path / "no-workspace")]}}],
        "maxRetryCount": 2,
        "lifecyclePolicies": [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [3]}}]}}]}
    done = run(local_batch, "image", body)
    (attempt,) = local_batch.attempts(done["name"])
    log = Path(attempt["log"]).read_text()
    assert "-m batch_jobs run frames" in log and "request.json" in log
    assert attempt["exit_code"] == 3 and done["status"]["state"] == "FAILED"


@pytest.mark.parametrize(("job_id", "body", "message"), [
    ("Bad_Id", job("true"), "jobId"),
    ("ok", {"taskGroups": []}, "exactly one task group"),
    ("ok", {"taskGroups": [{"taskSpec": {"runnables": []}}]}, "runnables"),
    ("ok", job("true", max_run="an hour"), "duration"),
    ("ok", {**job("true"), "labels": {"Bad Key": "v"}}, "label"),
    ("ok", {"taskGroups": [{"taskSpec": {"runnables": [{"container": {}}]}}]}, "imageUri"),
    ("ok", {"taskGroups": [{"taskSpec": {"runnables": [{"script": {"text": "true"}}], "maxRetryCount": 11}}]},
     "maxRetryCount"),
    ("ok", {**job("true"), "allocationPolicy": {"instances": [{"policy": {"provisioningModel": "CHEAP"}}]}},
     "provisioningModel"),
])
def test_invalid_jobs_are_refused(local_batch: LocalBatch, job_id: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(BatchApiError) as err:
        local_batch.create_job(PARENT, job_id, body)
    assert err.value.code == 400 and message in err.value.message


def test_duplicate_ids_get_and_delete(local_batch: LocalBatch) -> None:
    created = local_batch.create_job(PARENT, "dup", job("sleep 30"))
    with pytest.raises(BatchApiError) as err:
        local_batch.create_job(PARENT, "dup", job("true"))
    assert err.value.code == 409
    assert [j["name"] for j in local_batch.list_jobs(PARENT)] == [created["name"]]
    deadline = time.monotonic() + 20
    while not local_batch.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    local_batch.delete_job(created["name"])
    assert local_batch.processes() == []
    with pytest.raises(BatchApiError) as gone:
        local_batch.get_job(created["name"])
    assert gone.value.code == 404


def test_the_bodies_dispatch_builds_are_accepted(local_batch: LocalBatch) -> None:
    from core import stages
    from emulator.batch.jobspec import parse_job
    from functions.dispatch import batch_job

    bs = batch_job.BatchSettings(project="splatpipe-local", region="us-central1", job_image="img", data_bucket="d")
    for name in stages.ORDER:
        body = batch_job.job_body(name, "r", "gs://d/jobs/r", {"preset": "standard"}, 5, bs)
        spec = parse_job(PARENT, "sp-" + name, body)
        assert spec.max_run_duration == stages.stage(name).max_run_seconds
        assert spec.lifecycle[0].action == "FAIL_TASK" and spec.lifecycle[0].exit_codes == {3, 50005}


def test_a_timed_out_task_under_the_stages_policy_is_not_retried(local_batch: LocalBatch, tmp_path: Path) -> None:
    from core.batch_task import NO_RETRY_EXIT_CODES

    policy = [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": list(NO_RETRY_EXIT_CODES)}}]
    done = run(local_batch, "timeout-once", job("sleep 30", retries=2, max_run="1s", lifecycle=policy))
    assert done["status"]["state"] == "FAILED" and exit_codes(done) == [EXIT_MAX_RUN_DURATION]


def test_this_machine_has_no_gpu_for_a_gpu_job(local_batch: LocalBatch, tmp_path: Path) -> None:
    from core.batch_task import GPUS_ENV

    out = tmp_path / "gpus"
    done = run(local_batch, "gpu-job", job(f'echo -n "${GPUS_ENV}" > {out}', env={GPUS_ENV: "1"}))
    assert done["status"]["state"] == "SUCCEEDED" and out.read_text() == "0"


def test_delete_kills_the_task_process(local_batch: LocalBatch) -> None:
    created = local_batch.create_job(PARENT, "to-delete", job("sleep 60"))
    deadline = time.monotonic() + 20
    while not local_batch.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    (proc,) = local_batch.processes()
    local_batch.delete_job(created["name"])
    with pytest.raises(ProcessLookupError):
        os.kill(proc["pid"], 0)
