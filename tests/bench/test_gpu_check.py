"""bench/gpu (the GPU check) run here, without a GPU, so that it cannot rot before a GPU machine runs it.

The dry run is the real script (`bash bench/gpu/run.sh`) on a carry folder packed from the
synthetic ground-truth workspace: every step that needs no GPU runs (the machine, the carry
layout and its sparse model, the CUDA tests collected by pytest and skipping themselves), every
CUDA step reports "skipped: no CUDA" with no figure, and the JSON summary and the log are written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import stages
from core.options import normalize_options

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "batch_jobs"))
from workspace_fixture import SMALL, cached_gt_workspace  # noqa: E402

_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu" / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)

CUDA_STEPS = [s.name for s in gpu_check.STEPS if s.needs_cuda]
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a dry run is for machines without CUDA")


def _run(carry: Path, out: Path, work: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), GPU_CARRY=str(carry), GPU_CHECK_WORK=str(work))
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", str(REPO / "bench" / "gpu" / "run.sh"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def carry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A carry folder as prepare.sh lays it out, from the synthetic workspace; the sdist is a
    placeholder (without CUDA nothing builds it)."""
    root = tmp_path_factory.mktemp("carry")
    gpu_check.pack(cached_gt_workspace(SMALL).workspace, root, scene="synthetic-small", preset="preview")
    (root / "sdist").mkdir()
    (root / "sdist" / "gsplat-1.5.3.tar.gz").write_bytes(b"placeholder")
    return root


@needs_no_gpu
@pytest.mark.slow
def test_dry_run_without_cuda(carry: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _run(carry, out, work, "--budget", "300")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / gpu_check.SUMMARY_FILE).read_text())
    steps = summary["steps"]
    assert list(steps) == [s.name for s in gpu_check.STEPS]
    assert steps["env"]["status"] == "ok" and steps["env"]["cuda"] is False
    assert steps["env"]["torch"] == torch.__version__
    assert steps["wheels"]["status"] == "skipped: no wheels carried"
    layout = steps["carry"]
    assert layout["status"] == "ok", layout
    assert layout["views"] == layout["images"] == SMALL.n_frames
    assert layout["image_size"] == [SMALL.width, SMALL.height] and layout["points"] > 1000
    for preset in ("standard", "high"):
        want = stages.resolve("splat", normalize_options({"preset": preset}))
        assert layout["splat"][preset] == {"steps": want["steps"], "strategy": want["strategy"],
                                           "train_size": [SMALL.width, SMALL.height]}
    assert layout["manifest"]["scene"] == "synthetic-small" and layout["gsplat_sdist"] == ["gsplat-1.5.3.tar.gz"]
    # Every CUDA step: skipped, and no figure of any kind (nothing simulated).
    for name in CUDA_STEPS:
        assert steps[name] == {"status": "skipped: no CUDA"}, (name, steps[name])
    # The CUDA tests were collected by pytest and skipped themselves.
    tests = steps["cuda_tests"]
    assert tests["status"] == "skipped: no CUDA", tests
    assert "tests/batch_jobs/test_raster_cpu.py" in tests["files"]
    assert tests["counts"]["skipped"] == len(tests["tests"]) >= 3
    assert any("test_rasterizer_parity_with_gsplat_on_cuda" in t for t in tests["tests"])
    assert (out / "cuda_tests.xml").is_file()
    assert summary["failed_steps"] == []
    assert all(g["result"].startswith("not measured") for g in summary["goals"].values()), summary["goals"]
    assert set(summary["goals"]) == {"parity", "splat_standard", "depth"}
    log = (out / gpu_check.LOG_FILE).read_text()
    for name in gpu_check.STEP_NAMES:
        assert f"{name}: " in log
    # What comes back from the device: at most 8 files, plain names, at most 2 folders down.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.parent == out for p in files)


@needs_no_gpu
@pytest.mark.slow
def test_a_broken_carry_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    empty = tmp_path / "carry"
    empty.mkdir()
    out = tmp_path / "out"
    proc = _run(empty, out, tmp_path / "work", "--only", "env,carry,depth,mesh")
    summary = json.loads((out / gpu_check.SUMMARY_FILE).read_text())
    steps = summary["steps"]
    assert proc.returncode == 1 and summary["failed_steps"] == ["carry"]
    assert steps["carry"]["status"].startswith("failed: ") and "no MANIFEST.json" in steps["carry"]["status"]
    assert "workspace lacks request.json" in steps["carry"]["status"] and "no gsplat sdist" in steps["carry"]["status"]
    assert steps["depth"] == steps["mesh"] == {"status": "skipped: no CUDA"}
    assert steps["gsplat_build"]["status"] == "skipped: not selected (--only)"


@needs_no_gpu
@pytest.mark.slow
def test_a_step_past_its_limit_is_stopped_and_recorded(carry: Path, tmp_path: Path) -> None:
    """The step's whole process group goes (pytest and what it started); the run still ends with its summary."""
    out = tmp_path / "out"
    proc = _run(carry, out, tmp_path / "work", "--only", "env,cuda_tests", "--limit", "cuda_tests=2")
    summary = json.loads((out / gpu_check.SUMMARY_FILE).read_text())
    tests = summary["steps"]["cuda_tests"]
    assert proc.returncode == 1 and summary["failed_steps"] == ["cuda_tests"]
    assert tests["status"] == "timed out after 2 s" and tests["limit_s"] == 2 and tests["seconds"] < 15, tests
    assert "time limit of 2 s reached" in (out / gpu_check.LOG_FILE).read_text()


def test_a_stopped_splat_run_keeps_what_its_progress_lines_measured() -> None:
    lines = [(1.0, "[splat]   2.0% training 5000 Gaussians on 9 views (cuda)\n"),
             (2.0, "[splat]   2.1% step 100/7000, loss 0.2000, 5000 Gaussians\n"),
             (5.0, "GPUMEM 1000 2000\n"),
             (12.0, "[splat]  40.0% step 2100/7000, loss 0.0500, 250000 Gaussians\n"),
             (13.0, "GPUMEM 3000 4000\n")]
    got = gpu_check.partial_splat(lines)
    assert got == {"peak_gpu_mem_bytes": 3000, "peak_gpu_mem_reserved_bytes": 4000, "partial": True,
                   "steps_done": 2100, "steps_total": 7000, "steps_per_s_partial": 200.0,
                   "gaussians_at_stop": 250000, "train_seconds_if_rate_held": 35.0}
    assert gpu_check.partial_splat(lines[:1]) == {}  # nothing measured, nothing said


def test_goals_are_judged_only_on_what_a_step_measured() -> None:
    steps = {"parity": {"status": "ok", "rasterizer_max_rel": 2e-5, "render_max_rel": 3e-3},
             "splat_standard": {"status": "timed out after 180 s", "steps_per_s_partial": 30.0},
             "depth": {"status": "skipped: no CUDA"}}
    got = gpu_check.goals(steps)
    assert got["parity"]["result"] == "met" and got["parity"]["figure"] == 2e-5
    assert got["splat_standard"]["result"] == "not met: timed out after 180 s"
    assert got["depth"]["result"] == "not measured (skipped: no CUDA)" and "figure" not in got["depth"]


def test_the_depth_model_is_depth_anything_v2_small_sized() -> None:
    """24.8 M parameters, as depth-anything/Depth-Anything-V2-Small-hf (built without weights here)."""
    from transformers import DepthAnythingForDepthEstimation

    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(gpu_check.small_sized_config())
    n = sum(p.numel() for p in model.parameters())
    assert 24.5e6 < n < 25.1e6, n


def test_the_cuda_test_files_are_found() -> None:
    files = gpu_check.cuda_test_files()
    assert "tests/batch_jobs/test_raster_cpu.py" in files
    assert "tests/bench/test_gpu_check.py" not in files
