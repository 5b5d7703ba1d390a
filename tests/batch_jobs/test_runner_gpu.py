"""The stage runner on a VM that was given a GPU: no CUDA is a clear failure, never a CPU run."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from batch_jobs import runner
from batch_jobs.errors import EXIT_BAD_INPUT, NO_CUDA
from functions.batch_job import GPUS_ENV


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    src = tmp_path / "input.bin"
    src.write_bytes(b"video bytes")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "request.json").write_text(json.dumps({"request_id": "r1", "input": str(src),
                                                 "options": {"preset": "preview"}}))
    return ws


def _module(calls: list[Any]) -> types.ModuleType:
    mod = types.ModuleType("stage_under_test")
    mod.VERSION = 1
    mod.run = lambda ctx: calls.append(ctx) or {}
    return mod


def test_a_stage_given_a_gpu_without_cuda_fails_with_no_cuda(workspace: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert not torch.cuda.is_available()  # this machine has no GPU: the real check, not a stand-in
    calls: list[Any] = []
    monkeypatch.setattr(runner, "load_stage_module", lambda s: _module(calls))
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
    monkeypatch.setattr(runner, "load_stage_module", lambda s: _module(calls))
    res = runner.run_stage("splat", str(workspace))  # depth was switched off: no depth/ at all
    assert res.status == "succeeded", res.error
    assert res.success is not None and res.success["inputs"]["depth"] == "absent"
    assert calls[0].input_dir("depth").is_dir() is False  # local workspace: the folder is simply absent
