"""`workflows/reconstruct.yaml` on the local engine: real Batch jobs (the real stages on the storage
emulator, or a job whose command sleeps where a test needs a job that runs a while) built by
dispatch's own code. The far side of its HTTP calls (the queue function's GET/PUT /status,
dispatch, POST /webhook/{id}) is a recording HTTP server: the workflow's own boundary."""

from __future__ import annotations

import copy
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from wfcheck import error_payload, result

from core import pricing
from core.batch_task import EXIT_MAX_RUN_DURATION, EXIT_PREEMPTED
from core.options import normalize_options
from emulator.batch.runner import BatchApiError, LocalBatch
from emulator.workflows.connectors import LocalConnectors
from emulator.workflows.definition import parse_definition
from emulator.workflows.executions import Execution, WorkflowsEngine
from emulator.workflows.interpreter import ExecutionRuntime, Interpreter
from emulator.workflows.weather import parse_fault
from functions.dispatch import batch_job

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "workflows" / "reconstruct.yaml"
OPTIONS = {"preset": "preview", "max_frames": 8}
PARENT = "projects/splatpipe-local/locations/us-central1"
BATCH = batch_job.BatchSettings(project="splatpipe-local", region="us-central1",
                                job_image="europe-docker.pkg.dev/p/r/job:1", data_bucket="unused")


@pytest.fixture
def workspace(gcs_bucket: str, synthetic_video: dict[str, Path]) -> dict[str, str]:
    """A request as dispatch leaves it: the video uploaded, request.json written."""
    from batch_jobs import storage

    rid = "req-" + gcs_bucket[-8:]
    video = f"gs://{gcs_bucket}/uploads/s1/scene.mp4"
    storage.upload(synthetic_video["video"], video)
    ws = f"gs://{gcs_bucket}/jobs/{rid}"
    storage.write_json(f"{ws}/request.json", {"request_id": rid, "input": video, "options": OPTIONS,
                                              "stages": ["frames"]})
    return {"request_id": rid, "workspace": ws, "input": video, "bucket": gcs_bucket}


def settings(http_server: Any) -> dict[str, str]:
    return {"QUEUE_URL": http_server.url + "/queue", "DISPATCH_URL": http_server.url + "/dispatch"}


def argument(ws: dict[str, str], stages: tuple[str, ...] = ("frames",), options: dict[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The execution argument exactly as dispatch builds it (functions.dispatch.admission)."""
    opts = normalize_options(options or OPTIONS)
    return {"request_id": ws["request_id"], "workspace": ws["workspace"], "input": ws["input"], "options": opts,
            "priority": 2, **batch_job.stage_jobs(list(stages), ws["request_id"], ws["workspace"], opts, 2, BATCH),
            **extra}


def sleeping(arg: dict[str, Any], stage: str, seconds: int = 120, **task: Any) -> dict[str, Any]:
    """The stage's job, running `sleep` instead of the stage: a job that runs until it is stopped."""
    arg = copy.deepcopy(arg)
    spec = arg["jobs"][stage]["job"]["taskGroups"][0]["taskSpec"]
    spec["runnables"] = [{"script": {"text": f"sleep {seconds}"}}]
    spec.update(task)
    return arg


def run_reconstruct(engine: WorkflowsEngine, env: dict[str, str], arg: dict[str, Any], timeout: float = 180,
                    wait: bool = True) -> Execution:
    engine.deploy("reconstruct", YAML.read_text(), env)
    ex = engine.create_execution("reconstruct", json.dumps(arg))
    if wait:
        assert ex.done.wait(timeout), f"still {ex.state} at {ex.rt.current}"
    return ex


def puts(http_server: Any, rid: str) -> list[dict[str, Any]]:
    return [c.body for c in http_server.calls("PUT", f"/queue/status/{rid}")]


def processing(http_server: Any, rid: str, **record: Any) -> None:
    """What the queue's GET /status answers: the request is PROCESSING."""
    http_server.answer(f"/queue/status/{rid}", (200, {"request_id": rid, "state": "PROCESSING", **record}))


def job_dirs(batch: LocalBatch) -> list[Path]:
    return sorted(p for p in batch.run_dir.iterdir() if p.is_dir())


def wait_for_process(batch: LocalBatch, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = batch.processes()
        if procs:
            return procs[0]
        time.sleep(0.05)
    raise AssertionError("no task process started")


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_stage_runs_as_a_batch_job_and_the_request_completes(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    ws = workspace
    processing(http_server, ws["request_id"])
    arg = argument(ws, webhook_url=http_server.url + "/hook")
    ex = run_reconstruct(engine, settings(http_server), arg)
    out = result(ex)
    report = f"{ws['workspace']}/frames/report.json"
    assert out == {"request_id": ws["request_id"], "state": "COMPLETED", "outputs": {"frames_report": report},
                   "error": None, "warnings": []}
    running, done, completed = puts(http_server, ws["request_id"])
    (job,) = local_batch.list_jobs(PARENT)
    # The RUNNING update names the VM the job asks for (its InstancePolicy), which the stage is priced by.
    policy = arg["jobs"]["frames"]["job"]["allocationPolicy"]["instances"][0]["policy"]
    assert running == {"stage": "frames", "stage_state": "RUNNING", "batch_job": job["name"],
                       "execution": ex.name, "progress": {"frames": 0}, "machine": policy}
    assert pricing.Machine.from_policy(running["machine"]).machine_type == "n2-standard-8"
    metrics = done.pop("metrics")
    assert done == {"stage": "frames", "stage_state": "SUCCEEDED", "batch_job": job["name"],
                    "progress": {"frames": 1}, "warnings": []}
    assert set(metrics) == {"frames"} and metrics["frames"]  # the stage's _SUCCESS.json metrics
    assert completed == {"state": "COMPLETED", "outputs": {"frames_report": report}}
    assert len(http_server.calls("POST", "/dispatch")) == 1
    (hook,) = http_server.calls("POST", f"/queue/webhook/{ws['request_id']}")
    assert hook.body == {"request_id": ws["request_id"], "state": "COMPLETED",
                         "outputs": {"frames_report": report}, "error": None, "warnings": []}
    # Batch received dispatch's body unchanged, under a fresh id.
    assert re.fullmatch(r"sp-frames-req-[a-z0-9]+-\d+", job["name"].rsplit("/", 1)[1])
    sent = arg["jobs"]["frames"]["job"]
    assert {k: job[k] for k in sent if k != "taskGroups"} == {k: v for k, v in sent.items() if k != "taskGroups"}
    assert job["taskGroups"][0]["taskSpec"] == sent["taskGroups"][0]["taskSpec"]
    assert job["status"]["state"] == "SUCCEEDED"


def test_a_rerun_reports_the_finished_stage_skipped(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    from batch_jobs import storage

    processing(http_server, workspace["request_id"])
    env = settings(http_server)
    assert result(run_reconstruct(engine, env, argument(workspace)))["state"] == "COMPLETED"
    marker = f"{workspace['workspace']}/frames/_SUCCESS.json"
    # A stage's warnings (what went wrong without failing it) travel in its _SUCCESS.json.
    warning = {"code": "sfm_partial", "message": "1 of 8 photos were left out", "stage": "frames"}
    storage.write_json(marker, {**json.loads(storage.read_bytes(marker)), "warnings": [warning]})
    success = storage.read_bytes(marker)
    again = run_reconstruct(engine, env, argument(workspace))
    assert result(again)["state"] == "COMPLETED" and result(again)["warnings"] == [warning]
    skipped = puts(http_server, workspace["request_id"])[-2]
    assert skipped["stage_state"] == "SKIPPED" and skipped["warnings"] == [warning]
    assert storage.read_bytes(marker) == success


@pytest.mark.slow
def test_the_poll_loop_keeps_waiting_after_its_delay_reaches_the_one_minute_cap(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that runs past several one-minute polls: the loop goes on polling (it once fell
    through at the cap and read a _SUCCESS.json the running stage had not written). The
    workflow's clock runs 20 times fast, so ~3 s of real time are the 62 s before the cap."""
    slept: list[float] = []
    real_sleep = ExecutionRuntime.sleep

    def fast(rt: ExecutionRuntime, seconds: float) -> None:
        slept.append(seconds)
        real_sleep(rt, seconds / 20)

    monkeypatch.setattr(ExecutionRuntime, "sleep", fast)
    processing(http_server, workspace["request_id"])
    arg = argument(workspace)
    spec = arg["jobs"]["frames"]["job"]["taskGroups"][0]["taskSpec"]
    spec["runnables"].insert(0, {"script": {"text": "sleep 9"}})  # Batch runs runnables in order
    out = result(run_reconstruct(engine, settings(http_server), arg))
    assert out["state"] == "COMPLETED", out
    assert slept[:6] == [2, 4, 8, 16, 32, 60] and slept.count(60) >= 2, slept



def test_weather_while_a_job_runs_is_waited_out_and_the_job_kept(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    """The queue's status reads answer 503 and Batch's jobs.get 503 for 8 s while the job runs
    (emulator/workflows/weather.py): the workflow logs them and polls again; the job is neither
    deleted nor created again and the request completes."""
    rid = workspace["request_id"]
    processing(http_server, rid)
    arg = argument(workspace)
    spec = arg["jobs"]["frames"]["job"]["taskGroups"][0]["taskSpec"]
    spec["runnables"].insert(0, {"script": {"text": "sleep 8"}})  # Batch runs runnables in order
    ex = run_reconstruct(engine, settings(http_server), arg, wait=False)
    wait_for_process(local_batch)
    weather = engine.connectors.weather  # type: ignore[attr-defined]
    weather.add(parse_fault({"target": "http", "url_prefix": f"{http_server.url}/queue/status/", "methods": ["GET"],
                             "code": 503, "seconds": 8}))
    weather.add(parse_fault({"target": "batch", "methods": ["get"], "code": 503, "seconds": 8}))
    assert ex.done.wait(120), ex.rt.current
    out = result(ex)
    assert out["state"] == "COMPLETED", out
    assert weather.hits >= 2  # at least one poll met both faults
    assert len(job_dirs(local_batch)) == 1  # the job was kept, not created again
    assert [p["stage_state"] for p in puts(http_server, rid) if "stage_state" in p] == ["RUNNING", "SUCCEEDED"]

@pytest.mark.slow
def test_bad_input_fails_the_request_with_the_stage_error_and_the_job_is_deleted(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    from batch_jobs import storage

    storage.write_bytes(workspace["input"], b"this is not a video " * 200)
    processing(http_server, workspace["request_id"])
    # The queue could not deliver the webhook (502): retried, then the request's state is unaffected.
    http_server.answer(f"/queue/webhook/{workspace['request_id']}", (502, {"error": "webhook_failed"}))
    ex = run_reconstruct(engine, settings(http_server), argument(workspace, webhook_url=http_server.url + "/hook"))
    err = error_payload(ex)
    assert err["code"] == "NOT_A_VIDEO" and err["stage"] == "frames" and "FFmpeg" in err["message"]
    failed = puts(http_server, workspace["request_id"])[-1]
    assert failed == {"state": "FAILED", "stage": "frames", "stage_state": "FAILED", "error": err}
    assert local_batch.list_jobs(PARENT) == []  # the failed job was deleted
    (job_dir,) = job_dirs(local_batch)
    assert [p.name for p in job_dir.glob("*.log")] == ["task0-attempt0.log"]  # exit code 3: no retry
    assert len(http_server.calls("POST", "/dispatch")) == 1
    assert http_server.calls("POST", f"/queue/webhook/{workspace['request_id']}")[0].body["state"] == "FAILED"
    assert any("webhook failed" in json.dumps(line["payload"]) for line in ex.rt.logs)


def test_a_request_no_longer_processing_stops_the_workflow(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    http_server.answer(f"/queue/status/{workspace['request_id']}",
                       (409, {"error": {"code": "illegal_transition", "message": "request is CANCELLED"}}))
    ex = run_reconstruct(engine, settings(http_server), argument(workspace))
    assert result(ex)["state"] == "CANCELLED"
    assert local_batch.list_jobs(PARENT) == [] and job_dirs(local_batch) == []
    assert len(http_server.calls("POST", "/dispatch")) == 1


def test_a_request_cancelled_while_its_job_runs_deletes_the_job(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    rid = workspace["request_id"]
    processing(http_server, rid)
    ex = run_reconstruct(engine, settings(http_server), sleeping(argument(workspace), "frames"), wait=False)
    proc = wait_for_process(local_batch)
    http_server.answer(f"/queue/status/{rid}", (200, {"request_id": rid, "state": "CANCELLED"}))
    assert ex.done.wait(60), ex.rt.current
    assert result(ex)["state"] == "CANCELLED"
    assert gone(proc["pid"]) and local_batch.processes() == []
    with pytest.raises(BatchApiError):
        local_batch.get_job(proc["job"])  # jobs.delete: the job is gone
    assert [p["stage_state"] for p in puts(http_server, rid)] == ["RUNNING"]  # no FAILED, no COMPLETED


def test_waiting_past_the_stage_limit_fails_with_stage_timeout_and_deletes_the_job(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    processing(http_server, workspace["request_id"])
    arg = sleeping(argument(workspace), "frames")
    arg["jobs"]["frames"]["wait_seconds"] = 3
    ex = run_reconstruct(engine, settings(http_server), arg, wait=False)
    proc = wait_for_process(local_batch)
    assert ex.done.wait(60), ex.rt.current
    err = error_payload(ex)
    assert err["code"] == "stage_timeout" and err["stage"] == "frames"
    assert gone(proc["pid"]) and local_batch.list_jobs(PARENT) == []
    assert len(job_dirs(local_batch)) == 1  # not re-created


def test_a_task_past_its_max_run_duration_is_stage_timeout_and_not_retried(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    processing(http_server, workspace["request_id"])
    arg = sleeping(argument(workspace), "frames", maxRunDuration="1s", maxRetryCount=0)
    ex = run_reconstruct(engine, settings(http_server), arg, timeout=60)
    err = error_payload(ex)
    assert err == {"code": "stage_timeout", "stage": "frames",
                   "message": "the frames job ran past its time limit (maxRunDuration) on every attempt"}
    (job_dir,) = job_dirs(local_batch)  # one job: a timeout is not re-created
    assert [p.name for p in job_dir.glob("*.log")] == ["task0-attempt0.log"]
    assert local_batch.list_jobs(PARENT) == []
    assert puts(http_server, workspace["request_id"])[-1]["error"]["code"] == "stage_timeout"


@pytest.mark.slow
def test_a_preempted_job_is_created_again(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    rid = workspace["request_id"]
    processing(http_server, rid)
    arg = sleeping(argument(workspace), "frames", maxRetryCount=0)
    ex = run_reconstruct(engine, settings(http_server), arg, wait=False)
    first = wait_for_process(local_batch)
    assert local_batch.preempt(first["job"]) == 1  # exit code 50001: the job FAILED, VM lost
    deadline = time.monotonic() + 90  # the first re-creation waits 30 s (the retry's backoff)
    while time.monotonic() < deadline and not [p for p in local_batch.processes() if p["job"] != first["job"]]:
        time.sleep(0.2)
    (second,) = local_batch.processes()
    assert second["job"] != first["job"] and second["job"].startswith(f"{PARENT}/jobs/sp-frames-")
    with pytest.raises(BatchApiError):
        local_batch.get_job(first["job"])  # the failed job was deleted before the new one
    running = [p["batch_job"] for p in puts(http_server, rid) if p.get("stage_state") == "RUNNING"]
    assert running == [first["job"], second["job"]]
    http_server.answer(f"/queue/status/{rid}", (200, {"request_id": rid, "state": "CANCELLED"}))
    assert ex.done.wait(60) and result(ex)["state"] == "CANCELLED"
    assert gone(second["pid"])


def test_a_failed_best_effort_stage_is_a_warning_on_a_completed_request(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    # The real mesh stage, run without the splat it reads: it fails (MISSING_INPUT); mesh is
    # best-effort, so the request completes with what frames produced and a warning.
    rid = workspace["request_id"]
    processing(http_server, rid)
    arg = argument(workspace, ("frames", "mesh"), webhook_url=http_server.url + "/hook")
    assert arg["jobs"]["mesh"]["best_effort"] is True
    out = result(run_reconstruct(engine, settings(http_server), arg))
    report = f"{workspace['workspace']}/frames/report.json"
    (warning,) = out["warnings"]
    assert warning["code"] == "MISSING_INPUT" and warning["stage"] == "mesh" and "has not completed" in warning["message"]
    assert out["state"] == "COMPLETED" and out["outputs"] == {"frames_report": report}
    states = [(p.get("stage"), p.get("stage_state"), p.get("state")) for p in puts(http_server, rid)]
    assert states == [("frames", "RUNNING", None), ("frames", "SUCCEEDED", None), ("mesh", "RUNNING", None),
                      ("mesh", "FAILED", None), (None, None, "COMPLETED")]
    assert puts(http_server, rid)[3] == {"stage": "mesh", "stage_state": "FAILED", "warnings": [warning]}
    assert http_server.calls("POST", f"/queue/webhook/{rid}")[0].body["warnings"] == [warning]


def test_a_disabled_stage_boots_no_vm_and_is_reported_skipped(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    processing(http_server, workspace["request_id"])
    arg = argument(workspace, ("frames", "depth"), {**OPTIONS, "depth": False})
    assert arg["stages"] == ["frames"] and arg["disabled"] == ["depth"] and "depth" not in arg["jobs"]
    assert result(run_reconstruct(engine, settings(http_server), arg))["state"] == "COMPLETED"
    assert puts(http_server, workspace["request_id"])[0] == {"stage": "depth", "stage_state": "SKIPPED"}
    assert [j["labels"]["stage"] for j in local_batch.list_jobs(PARENT)] == ["frames"]


def test_a_job_left_by_a_cancelled_execution_is_deleted_by_the_next_one(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    rid = workspace["request_id"]
    processing(http_server, rid)
    env = settings(http_server)
    first = run_reconstruct(engine, env, sleeping(argument(workspace), "frames"), wait=False)
    proc = wait_for_process(local_batch)
    engine.cancel(first.name)  # the execution dies; as on Google Cloud, its job keeps running
    time.sleep(0.5)
    assert local_batch.get_job(proc["job"])["status"]["state"] == "RUNNING" and not gone(proc["pid"], 0.2)
    processing(http_server, rid, stages={"frames": {"state": "RUNNING", "batch_job": proc["job"]}})
    again = run_reconstruct(engine, env, argument(workspace))
    assert result(again)["state"] == "COMPLETED"
    assert gone(proc["pid"])
    with pytest.raises(BatchApiError):
        local_batch.get_job(proc["job"])


def test_bad_arguments_fail_the_execution(engine: WorkflowsEngine, http_server: Any) -> None:
    ex = run_reconstruct(engine, settings(http_server), {"request_id": "r", "workspace": "/local/path",
                                                          "batch_parent": PARENT, "stages": ["frames"]})
    assert error_payload(ex)["code"] == "BAD_REQUEST"
    ex = run_reconstruct(engine, settings(http_server), {"workspace": "gs://b/jobs/r"})
    assert error_payload(ex)["code"] == "BAD_REQUEST"


# --- subworkflows of the definition, called directly ------------------------------------------

def call_sub(name: str, args: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    definition = parse_definition(YAML.read_text(), connectors=LocalConnectors().has)
    env = {"GOOGLE_CLOUD_PROJECT_ID": "proj", "GOOGLE_CLOUD_LOCATION": "europe-west4", **(env or {})}
    return Interpreter(definition, ExecutionRuntime(env), LocalConnectors()).call_subworkflow(
        definition.subworkflows[name], args)


def failed_job(*exit_codes: int) -> dict[str, Any]:
    """A FAILED job as jobs.get returns it: its documented status fields."""
    events = [{"type": "STATUS_CHANGED", "description": "Job state is set from QUEUED to SCHEDULED"}]
    events += [{"type": "STATUS_CHANGED", "description": f"Task state is updated from RUNNING to FAILED "
                f"with exit code {c}.", "taskState": "FAILED", "taskExecution": {"exitCode": c}} for c in exit_codes]
    return {"name": f"{PARENT}/jobs/j", "status": {"state": "FAILED", "statusEvents": events}}


@pytest.mark.parametrize(("exit_codes", "code", "transient"), [
    ((EXIT_PREEMPTED,), "batch_transient", True),  # preempted (Spot)
    ((1, EXIT_PREEMPTED), "batch_transient", True),  # the last attempt was preempted
    ((), "batch_transient", True),  # failed before any task ran: no VM (stockout, quota)
    ((EXIT_MAX_RUN_DURATION,), "stage_timeout", False),  # past maxRunDuration: never re-created
    ((EXIT_PREEMPTED, EXIT_MAX_RUN_DURATION), "stage_timeout", False),
    ((50002,), "BATCH_JOB_FAILED", False),
    ((1,), "BATCH_JOB_FAILED", False),  # no _ERROR.json in this bucket: the exit code is the message
])
def test_failure_classification(gcs_bucket: str, exit_codes: tuple[int, ...], code: str, transient: bool) -> None:
    outcome = call_sub("classify_failure", {"job": failed_job(*exit_codes), "stage": "splat", "bucket": gcs_bucket,
                                            "error_object": "jobs%2Fr%2Fsplat%2F_ERROR.json"})
    assert outcome["code"] == code and outcome["stage"] == "splat"
    assert call_sub("is_transient", {"e": outcome}) is transient


def test_a_stage_failure_is_read_from_its_error_file(gcs_bucket: str) -> None:
    from batch_jobs import storage

    storage.write_json(f"gs://{gcs_bucket}/jobs/r/sfm/_ERROR.json",
                       {"code": "TOO_FEW_REGISTERED", "message": "3 of 40", "stage": "sfm", "retryable": False})
    outcome = call_sub("classify_failure", {"job": failed_job(3), "stage": "sfm", "bucket": gcs_bucket,
                                            "error_object": "jobs%2Fr%2Fsfm%2F_ERROR.json"})
    assert outcome == {"code": "TOO_FEW_REGISTERED", "message": "3 of 40", "stage": "sfm"}


@pytest.mark.parametrize(("error", "transient"), [
    ({"tags": ["HttpError"], "code": 429}, True),
    ({"tags": ["HttpError"], "code": 503}, True),
    ({"tags": ["HttpError"], "code": 400}, False),
    ({"tags": ["HttpError"], "code": 409}, False),
    ({"tags": ["ConnectionFailedError"]}, True),
    ({"code": "stage_timeout", "message": "x", "stage": "splat"}, False),
    ({"code": "CANCELLED", "message": "stop"}, False),
    ("a string", False),
])
def test_transient_failure_predicate(error: Any, transient: bool) -> None:
    assert call_sub("is_transient", {"e": error}) is transient


def test_request_errors_keep_their_code() -> None:
    err = call_sub("request_error", {"e": {"tags": ["KeyError"], "message": "key not found: x"}, "stage": "sfm"})
    assert err == {"code": "WORKFLOW_ERROR", "message": "key not found: x", "stage": "sfm"}
    err = call_sub("request_error", {"e": {"tags": ["HttpError"], "code": 409, "message": "conflict"}, "stage": "sfm"})
    assert err["code"] == "CANCELLED"


def test_the_yaml_defines_no_stage() -> None:
    text = YAML.read_text()
    for fact in ("maxRunDuration: ", "installGpuDrivers", "machineType", "report.json", "point_cloud.ply",
                 '"frames", "sfm"', "gpu_stages", "accelerators"):
        assert fact not in text, fact


def test_every_setting_the_workflow_reads_is_documented() -> None:
    names = set(re.findall(r'sys\.get_env\(\\?"([A-Z_]+)\\?"', YAML.read_text()))
    builtins = {n for n in names if n.startswith("GOOGLE_CLOUD_")}
    assert names - builtins == {"QUEUE_URL", "DISPATCH_URL"}
    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = [n for n in sorted(names - builtins) if f"`{n}`" not in doc]
    assert not missing, f"docs/configuration.md does not list {missing}"
