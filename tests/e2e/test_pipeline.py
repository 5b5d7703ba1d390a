"""End to end through the real local stack (no fakes): Cloud Storage upload -> finalize event ->
local Eventarc -> on_upload -> Redis queue -> dispatch -> local Workflows (reconstruct.yaml) ->
local Batch jobs running the real stages -> PUT /status -> Firestore."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from stackclient import StackClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGES = ("frames", "sfm", "depth", "splat", "mesh")
# Small but real: few frames, a short splat training (the CPU path), the preview preset otherwise.
SMALL = {"preset": "preview", "max_frames": 10, "splat_steps": 30}
EXPECTED_OUTPUTS = {
    "frames_report": "frames/report.json", "sfm_report": "sfm/report.json", "transforms": "sfm/transforms.json",
    "sparse_points": "sfm/points.ply", "depth_report": "depth/report.json", "splat_ply": "splat/point_cloud.ply",
    "splat_spz": "splat/scene.spz", "preview": "splat/preview.png", "splat_report": "splat/report.json",
    "mesh_glb": "mesh/mesh.glb", "mesh_ply": "mesh/mesh.ply", "mesh_report": "mesh/report.json",
}


def test_upload_to_completed_through_every_stage(stack: StackClient, synthetic_video: dict[str, Path]) -> None:
    uri = stack.put_object(stack.uploads, "e2e-full/scene.mp4", synthetic_video["video"].read_bytes(),
                           metadata={"options": json.dumps(SMALL), "priority": "4"})
    rid = stack.request_for_input(uri)
    status = stack.wait([rid], timeout=600)[rid]
    assert status["state"] == "COMPLETED", status.get("error")

    ws = f"gs://{stack.data}/jobs/{rid}"
    assert status["outputs"] == {name: f"{ws}/{path}" for name, path in EXPECTED_OUTPUTS.items()}
    for name, out_uri in status["outputs"].items():
        blob = stack.object(out_uri)
        assert blob is not None and blob.size > 0, name
    assert stack.read(status["outputs"]["splat_ply"]).startswith(b"ply\n")
    assert stack.read(status["outputs"]["mesh_glb"])[:4] == b"glTF"
    assert stack.read(status["outputs"]["preview"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert status["warnings"] == []
    # Each stage's headline figures, from its _SUCCESS.json, forwarded by the workflow.
    assert set(status["metrics"]) == set(STAGES)
    assert status["metrics"]["sfm"]["registered_images"] > 0 and status["metrics"]["mesh"]["faces"] > 0
    assert "gaussians" in status["metrics"]["splat"]
    for stage in STAGES:
        assert stack.object(f"{ws}/{stage}/_SUCCESS.json") is not None
        st = status["stages"][stage]
        assert st["state"] == "SUCCEEDED" and st["started_at"] and st["finished_at"], (stage, st)
        assert st["batch_job"].startswith(f"projects/{stack.project}/locations/us-central1/jobs/sp-{stage}-")
        assert status["progress"][stage] == 1

    doc = stack.firestore_doc(rid)
    assert doc is not None
    assert doc["state"] == "COMPLETED" and doc["priority"] == 4 and doc["session_id"] == "e2e-full"
    assert doc["input"] == uri and doc["options"] == SMALL
    assert doc["outputs"] == status["outputs"] and not doc.get("error")
    for stage in STAGES:
        assert doc["stages"][stage]["state"] == "SUCCEEDED" and doc["progress"][stage] == 1
        assert doc["stages"][stage]["batch_job"] == status["stages"][stage]["batch_job"]
    (execution,) = stack.settled_executions_of(rid)
    assert execution["state"] == "SUCCEEDED" and json.loads(execution["result"])["state"] == "COMPLETED"
    assert stack.queue_stats()["running"] == 0


def test_corrupt_video_fails_clearly_and_the_queue_moves_on(stack: StackClient, video_uri: str) -> None:
    bad = stack.put_object(stack.uploads, "e2e-corrupt/broken.mp4", b"\x00\x00\x00\x18ftypmp42 not really" * 300)
    bad_id = stack.request_for_input(bad)
    good_id = stack.preprocess({"session_id": "e2e-after-corrupt", "input": video_uri,
                                "options": {"preset": "preview", "max_frames": 4}})
    final = stack.wait([bad_id, good_id], timeout=180)
    failed, ok = final[bad_id], final[good_id]
    assert failed["state"] == "FAILED"
    assert failed["error"]["code"] in ("NOT_A_VIDEO", "NO_VIDEO_STREAM", "NO_DECODABLE_FRAMES")
    assert failed["error"]["stage"] == "frames" and "broken.mp4" in failed["error"]["message"]
    assert failed["stages"]["frames"]["state"] == "FAILED"
    assert all(failed["stages"][s]["state"] == "PENDING" for s in STAGES[1:])
    doc = stack.firestore_doc(bad_id)
    assert doc is not None and doc["state"] == "FAILED" and doc["error"]["code"] == failed["error"]["code"]
    (execution,) = stack.settled_executions_of(bad_id)
    assert execution["state"] == "FAILED"
    assert json.loads(execution["error"]["payload"])["code"] == failed["error"]["code"]
    job_name = failed["stages"]["frames"]["batch_job"]
    assert stack.batch_job(job_name)["error"]["code"] == 404  # the failed job was deleted
    attempts = stack.info.run_dir / "workflows" / "batch" / job_name.rsplit("/", 1)[1]
    assert [p.name for p in attempts.glob("*.log")] == ["task0-attempt0.log"]  # exit code 3: no retry
    assert ok["state"] == "COMPLETED" and list(ok["outputs"]) == ["frames_report"]
    assert stack.queue_stats()["running"] == 0


def _wait_for_attempt(stack: StackClient, stage: str, attempt: int, timeout: float = 240) -> dict[str, Any]:
    """A running attempt of the stage's task whose log shows the stage at work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in stack.batch_processes():
            if f"/jobs/sp-{stage}-" in p["job"] and p["attempt"] == attempt:
                log = Path(p["log"]).read_text(errors="replace") if Path(p["log"]).exists() else ""
                if f"[{stage}]" in log and "step" in log:
                    return p
        time.sleep(0.2)
    raise AssertionError(f"no running {stage} attempt {attempt} within {timeout}s")


def test_killed_stage_is_retried_and_a_rerun_skips_finished_stages(stack: StackClient, video_uri: str) -> None:
    from google.cloud.workflows.executions_v1 import Execution

    rid = stack.enqueue({"session_id": "e2e-kill", "input": video_uri, "priority": 1,
                         "options": {"preset": "preview", "max_frames": 10, "splat_steps": 60},
                         "stages": ["frames", "sfm", "depth", "splat"]})
    # 1. Kill the splat stage's process mid-run: Batch runs the task again.
    first = _wait_for_attempt(stack, "splat", 0)
    os.kill(first["pid"], signal.SIGKILL)
    second = _wait_for_attempt(stack, "splat", 1)
    assert second["job"] == first["job"]
    killed = stack.batch_job(first["job"])
    exits = [e["taskExecution"]["exitCode"] for e in killed["status"]["statusEvents"] if "taskExecution" in e]
    assert exits == [128 + signal.SIGKILL] and killed["status"]["state"] == "RUNNING"
    ws = f"gs://{stack.data}/jobs/{rid}"
    before = {s: stack.object(f"{ws}/{s}/_SUCCESS.json").generation for s in ("frames", "sfm", "depth")}

    # 2. The workflow dies (its execution is cancelled): the lease runs out, dispatch puts the
    #    request back and starts it again; the new execution skips what is done.
    #    The cancelled execution's splat job keeps running (as on Google Cloud); the new execution
    #    deletes it if it is still running when the new one reaches splat.
    (execution,) = stack.executions_of(rid)
    assert stack.workflows.cancel_execution(name=execution["name"]).state == Execution.State.CANCELLED
    status = stack.wait([rid], timeout=420)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    old = stack.batch_job(first["job"])
    assert old.get("error", {}).get("code") == 404 or old["status"]["state"] == "SUCCEEDED", old
    assert not any(p["job"] == first["job"] for p in stack.batch_processes())

    runs = sorted(stack.settled_executions_of(rid), key=lambda e: e["startTime"])
    assert [e["state"] for e in runs] == ["CANCELLED", "SUCCEEDED"]
    for s in ("frames", "sfm", "depth"):
        assert status["stages"][s]["state"] == "SKIPPED", (s, status["stages"][s])
        assert stack.object(f"{ws}/{s}/_SUCCESS.json").generation == before[s]  # not redone
    # SKIPPED when the old job finished splat before the new execution got there.
    assert status["stages"]["splat"]["state"] in ("SUCCEEDED", "SKIPPED")
    assert stack.object(status["outputs"]["splat_ply"]) is not None


def test_a_failed_mesh_leaves_the_request_completed_with_a_warning(stack: StackClient, video_uri: str) -> None:
    # mesh is best-effort. Run without the sfm and splat it reads, the real mesh stage fails.
    rid = stack.enqueue({"session_id": "e2e-mesh-fails", "input": video_uri,
                         "options": {"preset": "preview", "max_frames": 4}, "stages": ["frames", "mesh"]})
    status = stack.wait([rid], timeout=240)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    (warning,) = status["warnings"]
    assert warning["stage"] == "mesh" and warning["code"] == "MISSING_INPUT"
    assert status["stages"]["mesh"]["state"] == "FAILED" and status["stages"]["frames"]["state"] == "SUCCEEDED"
    assert list(status["outputs"]) == ["frames_report"] and not status.get("error")


def test_depth_switched_off_boots_no_vm_and_splat_trains_without_it(stack: StackClient, video_uri: str) -> None:
    rid = stack.enqueue({"session_id": "e2e-no-depth", "input": video_uri,
                         "options": {"preset": "preview", "max_frames": 10, "splat_steps": 20, "depth": False,
                                     "depth_loss": True}, "stages": ["frames", "sfm", "depth", "splat"]})
    status = stack.wait([rid], timeout=420)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    assert status["stages"]["depth"]["state"] == "SKIPPED" and not status["stages"]["depth"].get("batch_job")
    assert status["stages"]["splat"]["state"] == "SUCCEEDED" and "depth_report" not in status["outputs"]
    ws = f"gs://{stack.data}/jobs/{rid}"
    assert stack.object(f"{ws}/depth/_SUCCESS.json") is None


def test_ten_requests_two_at_a_time_highest_priority_first(stack: StackClient, video_uri: str) -> None:
    assert stack.queue_stats()["running"] == 0
    # Two slower requests (frames and sfm) take both slots; the other eight (frames only) wait and
    # must start by priority.
    blockers = [stack.enqueue({"session_id": f"e2e-block{i}", "input": video_uri, "priority": 5,
                               "options": {"preset": "preview", "max_frames": 10}, "stages": ["frames", "sfm"]})
                for i in range(2)]
    queued_priorities = [9, 8, 7, 6, 3, 2, 1, 0]
    queued = {stack.preprocess({"session_id": f"e2e-q{p}", "input": video_uri, "priority": p,
                                "options": {"preset": "preview", "max_frames": 4}}): p for p in queued_priorities}
    peak = {"queue": 0, "processes": 0}

    def sample() -> None:
        peak["queue"] = max(peak["queue"], stack.queue_stats()["running"])
        peak["processes"] = max(peak["processes"], len(stack.batch_processes()))

    final = stack.wait(blockers + list(queued), timeout=300, on_poll=sample)
    assert all(s["state"] == "COMPLETED" for s in final.values()), {r: s["state"] for r, s in final.items()}
    assert peak["queue"] <= 2 and peak["processes"] <= 2

    # Each request holds a slot from its stage starting until it is COMPLETED: never more than two.
    spans = {rid: (st["stages"]["frames"]["started_at"], st["updated_at"]) for rid, st in final.items()}
    edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
    running = most = 0
    for _, delta in edges:
        running += delta
        most = max(most, running)
    assert most <= 2

    # Everything queued behind the blockers started in priority order (0 is the highest).
    runs = {rid: stack.settled_executions_of(rid) for rid in final}
    assert all(len(r) == 1 and r[0]["state"] == "SUCCEEDED" for r in runs.values())
    first_done = min(spans[rid][1] for rid in blockers)
    waiting = [rid for rid in queued if spans[rid][0] >= first_done]
    assert len(waiting) == len(queued), "the blockers finished before the others were queued"
    # Two slots that free at the same moment start two requests at once (two dispatch calls race
    # to create their executions): starts within half a second count as one round.
    start = {rid: _seconds(runs[rid][0]["startTime"]) for rid in waiting}
    late = [(queued[a], queued[b]) for a in waiting for b in waiting
            if queued[a] < queued[b] and start[a] > start[b] + 0.5]
    assert not late, f"(higher, lower) priority pairs started in the wrong order: {late}"
    order = [queued[rid] for rid in sorted(waiting, key=start.__getitem__)]
    assert order[:2] in ([0, 1], [1, 0]) and order[-1] == 9, order


def _seconds(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
