"""A best-effort stage that fails leaves a COMPLETED request (through the real local stack).

The mesh stage is made to fail honestly: `mesh_voxel_size` at its largest accepted value (10 SfM
units) is more than the synthetic scene allows (the stage refuses a voxel over 1/8 of the
geometry, which only it can measure), so its job exits with bad input and no retry.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from stackclient import StackClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OPTIONS = {"preset": "preview", "max_frames": 10, "splat_steps": 30, "mesh_voxel_size": 10.0}
SPLAT_OUTPUTS = ("splat_ply", "splat_spz", "preview", "splat_report")
MESH_OUTPUTS = ("mesh_glb", "mesh_ply", "mesh_report")


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local receiver for the request's webhook: its URL and the bodies it got."""
    bodies: list[dict[str, Any]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/done", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_failed_mesh_leaves_a_completed_request_with_the_splat(
        stack: StackClient, video_uri: str, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, bodies = webhook
    rid = stack.enqueue({"session_id": "e2e-partial", "input": video_uri, "priority": 2, "options": OPTIONS,
                         "webhook_url": url})
    status = stack.wait([rid], timeout=600)[rid]
    assert status["state"] == "COMPLETED", status.get("error")
    assert status["error"] is None

    # What succeeded is there; the mesh wrote nothing.
    ws = f"gs://{stack.data}/jobs/{rid}"
    for name in SPLAT_OUTPUTS:
        assert name in status["outputs"], status["outputs"]
        blob = stack.object(status["outputs"][name])
        assert blob is not None and blob.size > 0, name
    assert stack.read(status["outputs"]["splat_ply"]).startswith(b"ply\n")
    assert not set(MESH_OUTPUTS) & set(status["outputs"])
    assert stack.object(f"{ws}/mesh/_SUCCESS.json") is None

    # The mesh stage: FAILED with its error; one warning says the same.
    mesh = status["stages"]["mesh"]
    assert mesh["state"] == "FAILED" and mesh["finished_at"], mesh
    assert mesh["error"]["code"] == "mesh_voxel_too_large", mesh
    assert "voxel_size 10 is too large" in mesh["error"]["message"]
    assert status["warnings"] == [{"stage": "mesh", **mesh["error"]}]
    for stage in ("frames", "sfm", "depth", "splat"):
        assert status["stages"][stage]["state"] == "SUCCEEDED" and status["stages"][stage]["error"] is None
    # Bad input (exit 3): the job was not retried.
    err = json.loads(stack.read(f"{ws}/mesh/_ERROR.json"))
    assert err["code"] == "mesh_voxel_too_large" and err["retryable"] is False

    # The headline figures are in the status.
    splat = status["metrics"]["splat"]
    report = json.loads(stack.read(status["outputs"]["splat_report"]))
    assert splat["heldout_psnr"] == report["heldout_psnr"] and splat["gaussians"] == report["gaussians"]
    assert "mesh" not in status["metrics"]

    # Firestore and the webhook agree.
    doc = _firestore_when(stack, rid, lambda d: d.get("state") == "COMPLETED")
    assert doc.get("error") is None, doc.get("error")
    assert doc["warnings"] == status["warnings"] and doc["stages"]["mesh"]["state"] == "FAILED"
    assert doc["metrics"]["splat"]["heldout_psnr"] == splat["heldout_psnr"]
    (execution,) = stack.settled_executions_of(rid)
    assert execution["state"] == "SUCCEEDED"
    result = json.loads(execution["result"])
    assert result["state"] == "COMPLETED" and result["warnings"] == [
        {k: w[k] for k in ("code", "message", "stage")} for w in status["warnings"]]
    assert len(bodies) == 1, bodies
    body = bodies[0]
    assert body["request_id"] == rid and body["state"] == "COMPLETED" and body["error"] is None
    assert body["warnings"] == result["warnings"]
    assert set(SPLAT_OUTPUTS) <= set(body["outputs"])


def _firestore_when(stack: StackClient, request_id: str, done: Callable[[dict[str, Any]], bool],
                    timeout: float = 30.0) -> dict[str, Any]:
    """The Firestore document once `done` holds (the mirror copies a change right after it, or on
    dispatch's next catch-up pass)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = stack.firestore_doc(request_id) or {}
        if done(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)
