"""One request followed through its structured logs (issue 20): by `request_id` alone, every
stage's start and end are found in what the functions and the Batch tasks wrote; the log route
returns them in order and `line=N` resumes; `splatpipe logs` prints them; and no callback token
the run issued appears in any log of the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stackclient import StackClient

from core.api import TOKEN_HEADER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RAN = ("frames", "sfm")


def _logged_by(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of one log file (a process's other output is skipped)."""
    found = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            found.append(line)
    return found


def _logged(run_dir: Path, request_id: str) -> list[dict[str, Any]]:
    """Every JSON line of the stack's logs that names the request, oldest first."""
    found = [line for path in sorted(run_dir.rglob("*.log")) for line in _logged_by(path)
             if line.get("request_id") == request_id]
    return sorted(found, key=lambda line: line["time"])


def test_a_request_followed_by_its_id_through_every_log(stack: StackClient, video_uri: str) -> None:
    resp = stack.http.post(f"{stack.urls['queue']}/enqueue", json={
        "session_id": "e2e-log", "input": video_uri, "stages": ["frames", "sfm", "depth"],
        "options": {"preset": "preview", "max_frames": 10, "depth": False}}, timeout=30)
    assert resp.status_code == 202, resp.text
    rid, token = resp.json()["request_id"], resp.json()["callback_token"]
    api = stack.urls["api"]
    # The token travels in queries and headers, as clients send it, on answered and refused calls.
    assert stack.http.get(f"{api}/status", params={"callback_token": token}, timeout=30).status_code == 200
    assert stack.http.get(f"{api}/status/{'0' * 32}", params={"callback_token": token}, timeout=30).status_code == 404
    assert stack.http.get(f"{api}/view/{rid}", params={"token": token}, timeout=30).status_code == 200
    status = stack.wait([rid], timeout=420)[rid]
    assert status["state"] == "COMPLETED", status.get("error")

    # 1. By request_id alone, in the files the stack's processes wrote.
    lines = _logged(stack.info.run_dir, rid)
    events = [(line["event"], line.get("stage"), line.get("state")) for line in lines if "event" in line]
    assert events[0] == ("request.accepted", None, None) and events[-1] == ("request.finished", None, "COMPLETED")
    for stage in RAN:
        started = events.index(("stage.started", stage, None))
        assert started < events.index(("stage.finished", stage, "SUCCEEDED"))
        # The stage's own Batch task logged under the same id, with its stage.
        assert any(line.get("stage") == stage and line["logger"].startswith("batch_jobs") for line in lines), stage
    assert ("stage.finished", "depth", "SKIPPED") in events and ("stage.started", "depth", None) not in events
    finished = {line["stage"]: line for line in lines if line.get("event") == "stage.finished"}
    for s in RAN:  # what its Batch job ran on, and the estimate (core.pricing)
        assert finished[s]["duration_s"] > 0 and finished[s]["machine_type"] and finished[s]["cost_usd"] > 0, s
    (done,) = [line for line in lines if line.get("event") == "request.finished"]
    assert done["cost_usd"] == pytest.approx(sum(finished[s]["cost_usd"] for s in RAN), abs=1e-5)

    # Dispatch's passes look at the queue and the mirror's backlog (no request of their own).
    passes = [line.get("event") for line in _logged_by(stack.info.run_dir / "fn-dispatch.log")]
    assert "queue.stats" in passes and "mirror.outbox" in passes

    # 2. The log route: the same lines, in order; line=N resumes.
    page = stack.http.get(f"{api}/requests/{rid}/log", headers={TOKEN_HEADER: token}, timeout=30).json()
    assert page["state"] == "COMPLETED" and page["line"] == 0 and page["more"] is False
    served = page["lines"]
    assert [(x["time"], x["message"]) for x in served] == [(x["time"], x["message"]) for x in lines[:len(served)]]
    assert [e for e in ((x["event"], x.get("stage"), x.get("state")) for x in served if "event" in x)] == events
    half = len(served) // 2
    rest = stack.http.get(f"{api}/requests/{rid}/log", params={"line": half, "callback_token": token},
                          timeout=30).json()
    assert rest["lines"] == served[half:] and rest["next_line"] == page["next_line"]

    # 3. splatpipe logs, followed to the end of the request.
    cli = subprocess.run([sys.executable, "-m", "splatpipe.cli", "logs", rid, "--token", token, "--follow"],
                         env={**os.environ, "SPLATPIPE_STACK_DIR": str(stack.info.run_dir)}, capture_output=True,
                         text=True, timeout=120, check=True)
    printed = cli.stdout.splitlines()
    assert len(printed) >= len(served) and any("stage.finished" in p and " sfm " in p for p in printed), cli.stdout

    # 4. No token the run issued is in any log of the stack.
    for path in stack.info.run_dir.rglob("*.log"):
        assert token not in path.read_text(errors="replace"), path
