"""The stage runner (docs/contracts.md, "Stage runner"), with a stand-in stage module (its own boundary)."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from batch_jobs import runner, storage
from batch_jobs.errors import NO_CUDA, StageError
from core.batch_task import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, GPUS_ENV


def _stage(body: Any) -> types.ModuleType:
    # The stages a stage reads come from the registry (core.stages), not the module.
    mod = types.ModuleType("fake_stage")
    mod.VERSION = 1
    mod.run = body
    return mod


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    src = tmp_path / "input.bin"
    src.write_bytes(b"video bytes")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "request.json").write_text(json.dumps({"request_id": "r1", "input": str(src),
                                                 "options": {"preset": "preview"}}))
    return ws


def test_success_skip_and_rerun_on_changed_options(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def body(ctx: runner.StageContext) -> dict[str, Any]:
        calls.append(ctx.params)
        ctx.progress.update(0.5, "half way")
        (ctx.out_dir / "images").mkdir()
        (ctx.out_dir / "images" / "a.jpg").write_bytes(b"jpg")
        return {"kept": 1}

    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(body))
    first = runner.run_stage("frames", str(workspace))
    assert first.exit_code == EXIT_OK and first.status == "succeeded"
    success = json.loads((workspace / "frames" / "_SUCCESS.json").read_text())
    assert success["metrics"] == {"kept": 1}
    assert success["params"]["target_frames"] == 40  # preview preset
    assert set(success["outputs"]) == {"images/a.jpg"}
    assert success["inputs"]["input"] == storage.file_sha256(workspace.parent / "input.bin")

    again = runner.run_stage("frames", str(workspace))
    assert again.status == "skipped" and len(calls) == 1

    changed = runner.run_stage("frames", str(workspace), options={"max_frames": 10})
    assert changed.status == "succeeded" and calls[-1]["target_frames"] == 10


def test_upstream_missing_is_a_clear_error(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(lambda ctx: {}))
    res = runner.run_stage("sfm", str(workspace))
    assert res.exit_code == EXIT_BAD_INPUT
    assert res.error["code"] == "MISSING_INPUT" and "frames" in res.error["message"]
    assert json.loads((workspace / "sfm" / "_ERROR.json").read_text())["code"] == "MISSING_INPUT"


def test_stage_error_and_crash_exit_codes(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(ctx: runner.StageContext) -> dict[str, Any]:
        raise StageError("NO_VIDEO_STREAM", "input has no video stream")

    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(bad))
    res = runner.run_stage("frames", str(workspace))
    assert (res.exit_code, res.error["code"]) == (EXIT_BAD_INPUT, "NO_VIDEO_STREAM")

    def crash(ctx: runner.StageContext) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(crash))
    res = runner.run_stage("frames", str(workspace))
    assert (res.exit_code, res.error["code"]) == (EXIT_RETRYABLE, "INTERNAL")
    assert not (workspace / "frames" / "_SUCCESS.json").exists()


def test_bad_request_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(lambda ctx: {}))
    res = runner.run_stage("frames", str(tmp_path))
    assert res.exit_code == EXIT_BAD_INPUT and "request.json" in res.error["message"]
    (tmp_path / "request.json").write_text(json.dumps({"input": "/nope", "options": {"preset": "x"}}))
    res = runner.run_stage("frames", str(tmp_path))
    assert res.error["code"] == "BAD_REQUEST" and "preset" in res.error["message"]


def test_gcs_workspace_round_trip(gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = f"gs://{gcs_bucket}/jobs/r2"
    storage.write_bytes(f"gs://{gcs_bucket}/uploads/v.mp4", b"video")
    storage.write_json(f"{ws}/request.json", {"request_id": "r2", "input": f"gs://{gcs_bucket}/uploads/v.mp4"})

    def body(ctx: runner.StageContext) -> dict[str, Any]:
        (ctx.out_dir / "report.json").write_text("{}")
        return {}

    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(body))
    assert runner.run_stage("frames", ws).status == "succeeded"
    assert storage.list_files(f"{ws}/frames") == ["_SUCCESS.json", "report.json"]
    assert runner.run_stage("frames", ws).status == "skipped"


# --- a VM given a GPU: no CUDA is a clear failure, never a CPU run --------------------------------

def test_a_stage_given_a_gpu_without_cuda_fails_with_no_cuda(workspace: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert not torch.cuda.is_available()  # this machine has no GPU: the real check, not a stand-in
    calls: list[Any] = []
    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(lambda ctx: calls.append(ctx) or {}))
    monkeypatch.setenv(GPUS_ENV, "1")
    res = runner.run_stage("frames", str(workspace))
    assert res.status == "failed" and res.exit_code == EXIT_BAD_INPUT and calls == []
    assert res.error is not None and res.error["code"] == NO_CUDA == "no_cuda"
    assert "CUDA sees 0" in res.error["message"]
    assert json.loads((workspace / "frames" / "_ERROR.json").read_text())["code"] == "no_cuda"

    monkeypatch.setenv(GPUS_ENV, "0")  # a CPU machine runs on the CPU
    assert runner.run_stage("frames", str(workspace)).status == "succeeded" and len(calls) == 1


def test_an_optional_upstream_that_did_not_run_is_not_required(workspace: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace / "sfm").mkdir()
    (workspace / "sfm" / "_SUCCESS.json").write_text("{}")
    calls: list[Any] = []
    monkeypatch.setattr(runner, "load_stage_module", lambda s: _stage(lambda ctx: calls.append(ctx) or {}))
    res = runner.run_stage("splat", str(workspace))  # depth was switched off: no depth/ at all
    assert res.status == "succeeded", res.error
    assert res.success is not None and res.success["inputs"]["depth"] == "absent"
    assert calls[0].input_dir("depth").is_dir() is False  # local workspace: the folder is simply absent
