"""`workflows/reconstruct.yaml` on the local engine: real Batch jobs running the real `frames`
stage on the storage emulator. The far side of its HTTP calls (the queue function's PUT /status,
dispatch, the webhook) is a recording HTTP server: the workflow's own boundary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from wfcheck import error_payload, result

from emulator.batch.runner import LocalBatch
from emulator.workflows.connectors import LocalConnectors
from emulator.workflows.definition import parse_definition
from emulator.workflows.executions import Execution, WorkflowsEngine
from emulator.workflows.interpreter import ExecutionRuntime, Interpreter

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "workflows" / "reconstruct.yaml"
OPTIONS = {"preset": "preview", "max_frames": 8}


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


def settings(http_server: Any, bucket: str, **extra: str) -> dict[str, str]:
    return {"QUEUE_URL": http_server.url + "/queue", "DISPATCH_URL": http_server.url + "/dispatch",
            "DATA_BUCKET": bucket, "REGION": "us-central1", "JOB_IMAGE": "europe-docker.pkg.dev/p/r/job:1",
            "DEPTH_MODEL": "/models/depth", "CPU_MACHINE_TYPE": "c2-standard-8", "GPU_MACHINE_TYPE": "g2-standard-8",
            "GPU_TYPE": "nvidia-l4", "GPU_COUNT": "1", "PROVISIONING_MODEL": "STANDARD", **extra}


def run_reconstruct(engine: WorkflowsEngine, env: dict[str, str], argument: dict[str, Any],
                    timeout: float = 180) -> Execution:
    engine.deploy("reconstruct", YAML.read_text(), env)
    ex = engine.create_execution("reconstruct", json.dumps(argument))
    assert ex.done.wait(timeout), f"still {ex.state} at {ex.rt.current}"
    return ex


def argument(ws: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"request_id": ws["request_id"], "workspace": ws["workspace"], "input": ws["input"], "options": OPTIONS,
            "priority": 2, "stages": ["frames"], **extra}


def puts(http_server: Any, rid: str) -> list[dict[str, Any]]:
    return [c.body for c in http_server.calls("PUT", f"/queue/status/{rid}")]


def test_a_stage_runs_as_a_batch_job_and_the_request_completes(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    ws = workspace
    ex = run_reconstruct(engine, settings(http_server, ws["bucket"]),
                         argument(ws, webhook_url=http_server.url + "/hook"))
    out = result(ex)
    report = f"{ws['workspace']}/frames/report.json"
    assert out == {"request_id": ws["request_id"], "state": "COMPLETED", "outputs": {"frames_report": report},
                   "error": None}
    running, done, completed = puts(http_server, ws["request_id"])
    (job,) = local_batch.list_jobs("projects/splatpipe-local/locations/us-central1")
    assert running == {"stage": "frames", "stage_state": "RUNNING", "batch_job": job["name"],
                       "execution": ex.name, "progress": {"frames": 0}}
    assert done == {"stage": "frames", "stage_state": "SUCCEEDED", "batch_job": job["name"],
                    "progress": {"frames": 1}}
    assert completed == {"state": "COMPLETED", "outputs": {"frames_report": report}}
    assert len(http_server.calls("POST", "/dispatch")) == 1
    (hook,) = http_server.calls("POST", "/hook")
    assert hook.body == {"request_id": ws["request_id"], "state": "COMPLETED",
                         "outputs": {"frames_report": report}, "error": None}

    # The job as Cloud Batch receives it.
    assert re.fullmatch(r"sp-frames-req-[a-z0-9]+-\d+", job["name"].rsplit("/", 1)[1])
    task = job["taskGroups"][0]["taskSpec"]
    (runnable,) = task["runnables"]
    assert runnable["container"] == {"imageUri": "europe-docker.pkg.dev/p/r/job:1",
                                     "commands": ["run", "frames", "--workspace", ws["workspace"],
                                                  "--request-id", ws["request_id"]]}
    env = runnable["environment"]["variables"]
    assert env["DEPTH_MODEL"] == "/models/depth" and env["GOOGLE_CLOUD_PROJECT"] == "splatpipe-local"
    assert env["DATA_BUCKET"] == ws["bucket"] and env["REGION"] == "us-central1"
    assert task["maxRetryCount"] == 2 and task["maxRunDuration"] == "3600s"
    assert task["lifecyclePolicies"] == [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [3]}}]
    (instance,) = job["allocationPolicy"]["instances"]
    assert instance["installGpuDrivers"] is False and "accelerators" not in instance["policy"]
    assert instance["policy"]["machineType"] == "c2-standard-8"
    assert instance["policy"]["provisioningModel"] == "STANDARD"
    assert job["labels"] == {"app": "splatpipe", "stage": "frames", "request_id": ws["request_id"]}
    assert job["logsPolicy"] == {"destination": "CLOUD_LOGGING"} and job["priority"] == 79


def test_a_rerun_reports_the_finished_stage_skipped(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    from batch_jobs import storage

    env = settings(http_server, workspace["bucket"])
    assert result(run_reconstruct(engine, env, argument(workspace)))["state"] == "COMPLETED"
    success = storage.read_bytes(f"{workspace['workspace']}/frames/_SUCCESS.json")
    again = run_reconstruct(engine, env, argument(workspace))
    assert result(again)["state"] == "COMPLETED"
    assert puts(http_server, workspace["request_id"])[-2]["stage_state"] == "SKIPPED"
    assert storage.read_bytes(f"{workspace['workspace']}/frames/_SUCCESS.json") == success


def test_bad_input_fails_the_request_with_the_stage_error_and_no_retry(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    from batch_jobs import storage

    storage.write_bytes(workspace["input"], b"this is not a video " * 200)
    http_server.answer("/hook", (404, {"error": "gone"}))  # a broken webhook changes nothing
    ex = run_reconstruct(engine, settings(http_server, workspace["bucket"]),
                         argument(workspace, webhook_url=http_server.url + "/hook"))
    err = error_payload(ex)
    assert err["code"] == "NOT_A_VIDEO" and err["stage"] == "frames" and "FFmpeg" in err["message"]
    failed = puts(http_server, workspace["request_id"])[-1]
    assert failed == {"state": "FAILED", "stage": "frames", "stage_state": "FAILED", "error": err}
    (job,) = local_batch.list_jobs("projects/splatpipe-local/locations/us-central1")
    assert len(local_batch.attempts(job["name"])) == 1  # exit code 3: no retry
    assert len(http_server.calls("POST", "/dispatch")) == 1
    assert http_server.calls("POST", "/hook")[0].body["state"] == "FAILED"
    assert any("webhook failed" in json.dumps(line["payload"]) for line in ex.rt.logs)


def test_a_request_no_longer_processing_stops_the_workflow(
        engine: WorkflowsEngine, local_batch: LocalBatch, http_server: Any, workspace: dict[str, str]) -> None:
    http_server.answer(f"/queue/status/{workspace['request_id']}",
                       (409, {"error": {"code": "illegal_transition", "message": "request is CANCELLED"}}))
    ex = run_reconstruct(engine, settings(http_server, workspace["bucket"]), argument(workspace))
    assert result(ex)["state"] == "CANCELLED"
    assert local_batch.list_jobs("projects/splatpipe-local/locations/us-central1") == []
    assert len(http_server.calls("POST", "/dispatch")) == 1


def test_bad_arguments_fail_the_execution(engine: WorkflowsEngine, http_server: Any) -> None:
    ex = run_reconstruct(engine, settings(http_server, "b"), {"request_id": "r", "workspace": "/local/path"})
    assert error_payload(ex)["code"] == "BAD_REQUEST"
    ex = run_reconstruct(engine, settings(http_server, "b"), {"workspace": "gs://b/jobs/r"})
    assert error_payload(ex)["code"] == "BAD_REQUEST"


# --- subworkflows of the definition, called directly ------------------------------------------

def call_sub(name: str, args: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    definition = parse_definition(YAML.read_text(), connectors=LocalConnectors().has)
    env = {"GOOGLE_CLOUD_PROJECT_ID": "proj", "GOOGLE_CLOUD_LOCATION": "europe-west4", **(env or {})}
    return Interpreter(definition, ExecutionRuntime(env), LocalConnectors()).call_subworkflow(
        definition.subworkflows[name], args)


def test_gpu_stages_get_gpus_spot_network_and_service_account() -> None:
    env = {"JOB_IMAGE": "img", "GPU_TYPE": "nvidia-tesla-t4", "GPU_COUNT": "2", "GPU_MACHINE_TYPE": "n1-standard-8",
           "BATCH_SERVICE_ACCOUNT": "batch@proj.iam.gserviceaccount.com", "PROVISIONING_MODEL": "STANDARD",
           "BATCH_NETWORK": "projects/proj/global/networks/vpc",
           "BATCH_SUBNETWORK": "projects/proj/regions/europe-west4/subnetworks/batch"}
    body = call_sub("batch_job_body", {"stage": "splat", "request_id": "Req_1", "workspace": "gs://d/jobs/Req_1",
                                       "options": {"spot": True}, "priority": 0}, env)
    (instance,) = body["allocationPolicy"]["instances"]
    assert instance["installGpuDrivers"] is True
    assert instance["policy"]["accelerators"] == [{"type": "nvidia-tesla-t4", "count": 2}]
    assert instance["policy"]["machineType"] == "n1-standard-8" and instance["policy"]["provisioningModel"] == "SPOT"
    assert body["allocationPolicy"]["serviceAccount"] == {"email": "batch@proj.iam.gserviceaccount.com"}
    assert body["allocationPolicy"]["network"]["networkInterfaces"] == [{
        "network": env["BATCH_NETWORK"], "subnetwork": env["BATCH_SUBNETWORK"], "noExternalIpAddress": True}]
    assert body["labels"]["request_id"] == "req_1" and body["priority"] == 99
    assert body["taskGroups"][0]["taskSpec"]["maxRunDuration"] == "21600s"
    env_vars = body["taskGroups"][0]["taskSpec"]["runnables"][0]["environment"]["variables"]
    assert env_vars["GOOGLE_CLOUD_PROJECT"] == "proj" and env_vars["REGION"] == "europe-west4"
    assert env_vars["DEPTH_MODEL"] == "depth-anything/Depth-Anything-V2-Small-hf"
    cpu = call_sub("batch_job_body", {"stage": "sfm", "request_id": "r", "workspace": "gs://d/jobs/r",
                                      "options": {"spot": False}, "priority": 9}, {"PROVISIONING_MODEL": "SPOT"})
    policy = cpu["allocationPolicy"]["instances"][0]["policy"]
    assert policy["provisioningModel"] == "STANDARD" and "accelerators" not in policy
    assert "serviceAccount" not in cpu["allocationPolicy"] and "network" not in cpu["allocationPolicy"]
    assert cpu["priority"] == 9


@pytest.mark.parametrize(("error", "transient"), [
    ({"tags": ["OperationError"], "message": "failed", "operation": {"status": {"statusEvents": [
        {"description": "Task state is updated from RUNNING to FAILED on zones/z/instances/i with exit code 50001."}]}}},
     True),
    ({"tags": ["OperationError"], "operation": {"status": {"statusEvents": [
        {"description": "x", "taskExecution": {"exitCode": 50001}}]}}}, True),
    ({"tags": ["OperationError"], "message": "Job failed: CODE_GCE_ZONE_RESOURCE_POOL_EXHAUSTED"}, True),
    ({"tags": ["OperationError"], "message": "Quota 'NVIDIA_L4_GPUS' exceeded"}, True),
    ({"tags": ["OperationError"], "message": "x", "operation": {"status": {"statusEvents": [
        {"description": "Task state is updated from RUNNING to FAILED with exit code 3."}]}}}, False),
    ({"tags": ["OperationError"], "message": "x", "operation": {"status": {"statusEvents": [
        {"description": "with exit code 1.", "taskExecution": {"exitCode": 1}}]}}}, False),
    ({"tags": ["HttpError"], "code": 429}, True),
    ({"tags": ["HttpError"], "code": 503}, True),
    ({"tags": ["HttpError"], "code": 400}, False),
    ({"tags": ["ConnectionFailedError"]}, True),
    ({"code": "CANCELLED", "message": "stop"}, False),
    ("a string", False),
])
def test_transient_failure_predicate(error: Any, transient: bool) -> None:
    assert call_sub("is_transient", {"e": error}) is transient


def test_a_job_failure_without_an_error_file_is_reported_from_batch(gcs_bucket: str) -> None:
    err = call_sub("stage_error", {"e": {"tags": ["OperationError"], "message": "Batch job x failed: killed"},
                                   "stage": "splat", "bucket": gcs_bucket, "object": "jobs%2Fr%2Fsplat%2F_ERROR.json"})
    assert err == {"code": "BATCH_JOB_FAILED", "message": "Batch job x failed: killed", "stage": "splat"}
    err = call_sub("request_error", {"e": {"tags": ["KeyError"], "message": "key not found: x"}, "stage": "sfm"})
    assert err == {"code": "WORKFLOW_ERROR", "message": "key not found: x", "stage": "sfm"}


def test_every_setting_the_workflow_reads_is_documented() -> None:
    names = set(re.findall(r'sys\.get_env\("([A-Z_]+)"', YAML.read_text()))
    builtins = {n for n in names if n.startswith("GOOGLE_CLOUD_")}
    readme = (REPO / "README.md").read_text()
    missing = [n for n in sorted(names - builtins) if f"`{n}`" not in readme]
    assert not missing, f"README's configuration does not list {missing}"
