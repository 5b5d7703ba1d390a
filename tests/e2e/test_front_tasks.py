"""The task API through the whole local stack (no fakes): a local video uploaded through the api
with the SDK, cancel (the running Batch task's process is gone within seconds and the workflow
execution is CANCELLED), restart (finished stages SKIPPED by their `_SUCCESS.json`), restart
from a stage (that stage runs again), download and delete."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from stackclient import StackClient

from splatpipe.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TWO_STAGES = {"preset": "preview", "max_frames": 10}


def _running_task(stack: StackClient, rid: str, stage: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in stack.batch_processes():
            if f"/jobs/sp-{stage}-{rid[:20]}" in p["job"]:
                return p
        time.sleep(0.2)
    raise AssertionError(f"no running {stage} task for {rid} within {timeout}s; logs in {stack.info.run_dir}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_restart_from_stage_download_delete(stack: StackClient, synthetic_video: dict[str, Path],
                                                  tmp_path: Path) -> None:
    client = Client(stack.urls["api"])
    # The api's upload flow with a local file (no bucket rights), then the queue's enqueue with
    # two stages only (the api's trigger runs all five): the same uploaded input.
    req = client.submit(synthetic_video["video"], session_id="e2e-front", options=TWO_STAGES)
    uploaded = req.status()["input"]
    assert uploaded.startswith(f"gs://{stack.uploads}/e2e-front/_api/uploads/") and uploaded.endswith("/scene.mp4")
    assert stack.read(uploaded) == synthetic_video["video"].read_bytes()
    req.cancel()
    made = stack.http.post(f"{stack.urls['queue']}/enqueue", json={
        "session_id": "e2e-front", "input": uploaded, "options": TWO_STAGES, "stages": ["frames", "sfm"]},
        timeout=30).json()
    handle = client.handle(made["request_id"], made["callback_token"])
    rid = handle.request_id

    # 1. Cancel while sfm runs: its process is gone within seconds, the execution is CANCELLED.
    task = _running_task(stack, rid, "sfm")
    assert _pid_alive(task["pid"])
    t0 = time.monotonic()
    assert handle.cancel()["state"] == "CANCELLED"
    while _pid_alive(task["pid"]) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    gone_after = time.monotonic() - t0
    assert not _pid_alive(task["pid"]), "the sfm task's process outlived the cancel by 10 s"
    assert gone_after < 10
    assert not [p for p in stack.batch_processes() if rid[:20] in p["job"]]
    (execution,) = stack.settled_executions_of(rid)
    assert execution["state"] == "CANCELLED", execution.get("error")
    status = stack.status(rid)
    assert status["state"] == "CANCELLED" and status["stages"]["frames"]["state"] == "SUCCEEDED"
    ws = f"gs://{stack.data}/jobs/{rid}"
    frames_done = stack.object(f"{ws}/frames/_SUCCESS.json").generation

    # 2. Restart: frames is skipped by its _SUCCESS.json, sfm runs to the end.
    assert handle.restart()["state"] == "QUEUED"
    status = stack.wait([rid], timeout=300)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    assert status["stages"]["frames"]["state"] == "SKIPPED" and status["stages"]["sfm"]["state"] == "SUCCEEDED"
    assert stack.object(f"{ws}/frames/_SUCCESS.json").generation == frames_done
    sfm_done = stack.object(f"{ws}/sfm/_SUCCESS.json").generation

    # 3. Restart from sfm: frames still skipped, sfm runs again (a new _SUCCESS.json).
    assert handle.restart(from_stage="sfm")["state"] == "QUEUED"
    status = stack.wait([rid], timeout=300)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    assert status["stages"]["frames"]["state"] == "SKIPPED" and status["stages"]["sfm"]["state"] == "SUCCEEDED"
    assert stack.object(f"{ws}/sfm/_SUCCESS.json").generation != sfm_done
    assert [e["state"] for e in sorted(stack.settled_executions_of(rid), key=lambda e: e["startTime"])] == \
        ["CANCELLED", "SUCCEEDED", "SUCCEEDED"]

    # 4. Download: every output, byte for byte.
    files = handle.download(tmp_path / "out")
    assert {str(f.relative_to(tmp_path / "out")) for f in files} == {
        uri.removeprefix(ws + "/") for uri in status["outputs"].values()}
    for name, uri in status["outputs"].items():
        assert (tmp_path / "out" / uri.removeprefix(ws + "/")).read_bytes() == stack.read(uri), name

    # 5. Delete: the workspace is gone, the id answers DELETED; the session lists both requests.
    assert handle.delete()["state"] == "DELETED"
    assert stack.object(f"{ws}/sfm/_SUCCESS.json") is None and stack.object(f"{ws}/request.json") is None
    assert handle.status()["state"] == "DELETED"
    listed = {r["request_id"]: r["state"] for r in client.list("e2e-front", handle.token)}
    assert listed == {rid: "DELETED", req.request_id: "CANCELLED"}
    manifest = requests.get(f"{stack.urls['api']}/requests/{rid}/download",
                            headers={"X-Callback-Token": handle.token}, timeout=30)
    assert manifest.status_code == 409


def test_webhooks_through_the_stack_are_signed(stack: StackClient, video_uri: str) -> None:
    """The workflow hands the webhook to the queue function, which signs what it sends."""
    import http.server
    import json
    import threading

    from functions.webhooks import signing as webhook_signing

    got: list[tuple[dict[str, str], bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rid = stack.enqueue({"session_id": "e2e-hook", "input": video_uri, "stages": ["frames"],
                             "options": {"preset": "preview", "max_frames": 4},
                             "webhook_url": f"http://127.0.0.1:{server.server_port}/hook"})
        assert stack.wait([rid], timeout=180)[rid]["state"] == "COMPLETED"
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()
    ((headers, body),) = got
    assert json.loads(body)["request_id"] == rid and json.loads(body)["state"] == "COMPLETED"
    ts, sig = headers[webhook_signing.TIMESTAMP_HEADER], headers[webhook_signing.SIGNATURE_HEADER]
    assert webhook_signing.verify(body, ts, sig, stack.env["WEBHOOK_SECRET"])
    assert not webhook_signing.verify(body, ts, sig, "another secret")
