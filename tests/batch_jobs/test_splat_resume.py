"""Checkpoints and resume of the splat training (batch_jobs.gaussians.checkpoint, trainer.Trainer).

- A run stopped after step k, saved, and resumed in a new trainer from the saved state ends with
  the same parameters, bit for bit, as a run never stopped (CPU, both strategies).
- The store publishes a checkpoint only through a pointer whose checksum it matches, keeps the
  last two, and ignores one made from other inputs or parameters.
- The stage, killed (SIGKILL, as a Spot VM goes) after its first checkpoint and started again,
  resumes from it and ends with the same splat as a run never killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from workspace_fixture import SMALL, GTWorkspace, cached_gt_workspace, small_gt_workspace  # noqa: F401 (fixture)

from batch_jobs import runner
from batch_jobs.gaussians import checkpoint, ply
from batch_jobs.gaussians import strategy as strategy_module
from batch_jobs.gaussians.camera import load_views
from batch_jobs.gaussians.checkpoint import CheckpointStore
from batch_jobs.gaussians.params import init_params
from batch_jobs.gaussians.trainer import Checkpointing, TrainConfig, Trainer
from batch_jobs.sparse_model import read_sparse_model
from core import stages
from core.workspace import CHECKPOINTS, LATEST_SPLAT

# Each trains for real on CPU: part of `make test`, not of `make check`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = 120


@pytest.fixture(scope="module")
def small_scene() -> tuple:
    gt = cached_gt_workspace(SMALL)
    model = read_sparse_model(gt.workspace / "sfm" / "sparse" / "0")
    return model, load_views(model, gt.workspace / "sfm" / "images", 96)


def _trainer(small_scene: tuple, strategy: str) -> Trainer:
    model, views = small_scene
    torch.manual_seed(0)
    params = init_params(model.points, model.colors, sh_degree=1, seed=0,
                         init_opacity=0.5 if strategy == "mcmc" else 0.1, init_scale=0.1 if strategy == "mcmc" else 1.0)
    cfg = TrainConfig(steps=STEPS, sh_degree=1, strategy=strategy, depth_loss=False, seed=0, opacity_reset=True, cap_max=int(1.5 * len(params["means"])))
    return Trainer(params, views, cfg, model.scene_extent()[1])


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_a_resumed_run_ends_bit_for_bit_where_an_unbroken_one_does(small_scene: tuple, strategy: str,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Opacity resets at steps 30 and 60 of 120 (its floor lowered for this short run): one before
    # the stop at 57, one after the resume.
    monkeypatch.setattr(strategy_module, "MIN_RESET_INTERVAL", 1)
    whole = _trainer(small_scene, strategy)
    assert strategy == "mcmc" or whole.strategy.opacity_reset
    whole.run()

    first = _trainer(small_scene, strategy)
    store = CheckpointStore(str(tmp_path / "ckpt"), digest="d1")
    # Stopped mid-densification (refinement runs every 10 steps from step 12 at 120 steps).
    first.run(checkpointing=Checkpointing(every_steps=25, every_seconds=1e9, save=store.save), stop_after=57)
    loaded = store.load()
    assert loaded is not None and loaded.step == 50  # the last checkpoint before the stop
    del first

    resumed = _trainer(small_scene, strategy)  # a new process would start from the same init
    torch.manual_seed(12345)  # whatever the global generator holds now, the checkpoint's wins
    resumed.load_state_dict(loaded.state)
    resumed.run()
    assert resumed.step == whole.step == STEPS
    assert set(resumed.params) == set(whole.params)
    for name in whole.params:
        assert torch.equal(resumed.params[name], whole.params[name]), name
    assert torch.equal(resumed.background.texture, whole.background.texture)
    assert resumed.stats.loss_history == whole.stats.loss_history
    assert resumed.stats.peak_gaussians == whole.stats.peak_gaussians


def test_the_store_publishes_through_a_checked_pointer_and_keeps_two(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), digest="abc")
    for step in (10, 20, 30):
        saved = store.save(step, {"x": torch.full((4,), float(step))})
        assert saved.bytes > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.POINTER, "step-00000020.pt", "step-00000030.pt"]
    loaded = store.load()
    assert loaded is not None and loaded.step == 30 and torch.equal(loaded.state["x"], torch.full((4,), 30.0))

    # A file that does not match its pointer (half written, or replaced) is never read.
    (tmp_path / "step-00000030.pt").write_bytes(b"half a checkpoint")
    assert store.load() is None
    # A file written but not yet published: the pointer still names the last published one.
    store.save(40, {"x": torch.zeros(1)})
    pointer = json.loads((tmp_path / checkpoint.POINTER).read_text())
    (tmp_path / "step-00000050.pt").write_bytes(b"in progress")
    assert pointer["step"] == 40 and store.load().step == 40  # type: ignore[union-attr]
    store.clear()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_another_runs_checkpoints_are_ignored_and_never_crowd_out_this_ones(tmp_path: Path) -> None:
    old = CheckpointStore(str(tmp_path), digest="other inputs")
    for step in (20000, 25000):
        old.save(step, {"x": torch.ones(1)})
    new = CheckpointStore(str(tmp_path), digest="this run")
    # Saved before any load (later steps of another run lie about): only older files are pruned.
    new.save(1000, {"x": torch.zeros(1)})
    assert new.load() is not None and new.load().step == 1000  # type: ignore[union-attr]
    # A pointer of another run is ignored, and its files go with it.
    old.save(30000, {"x": torch.ones(1)})
    assert new.load() is None
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    new.save(2000, {"x": torch.zeros(1)})
    assert new.load().step == 2000  # type: ignore[union-attr]


def _stage_cmd(ws: Path) -> list[str]:
    return [sys.executable, "-m", "batch_jobs", "run", "splat", "--workspace", str(ws)]


def test_the_stage_killed_after_a_checkpoint_resumes_and_ends_as_an_unbroken_run(
        small_gt_workspace: GTWorkspace, tmp_path: Path) -> None:  # noqa: F811
    """SIGKILL, as a preempted Spot VM ends: nothing of the stage's own clean-up runs."""
    steps = 260  # preview checkpoints every 200 steps (or 60 s)
    every = stages.stage("splat").presets["preview"]["checkpoint_steps"]
    assert every == 200
    options = {"preset": "preview", "splat_steps": steps, "depth": False}
    src = small_gt_workspace.workspace
    wss = {}
    for name in ("whole", "killed"):
        ws = tmp_path / name
        shutil.copytree(src, ws, ignore=shutil.ignore_patterns("splat", "depth", CHECKPOINTS))
        req = json.loads((ws / "request.json").read_text())
        (ws / "request.json").write_text(json.dumps({**req, "options": options}))
        wss[name] = ws
    env = {**os.environ, "SPLATPIPE_STATUS_STORE": "log"}

    proc = subprocess.Popen(_stage_cmd(wss["killed"]), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pointer = wss["killed"] / CHECKPOINTS / "splat" / checkpoint.POINTER
    deadline = time.monotonic() + 300
    latest = wss["killed"] / LATEST_SPLAT  # published right after the checkpoint
    while not (pointer.exists() and latest.is_file()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pointer.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in 300 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = json.loads(pointer.read_text())["step"]
    assert 0 < first < steps  # every 200 steps, or sooner by the 60 s clock on a slow machine
    assert not (wss["killed"] / "splat" / "_SUCCESS.json").exists()

    again = subprocess.run(_stage_cmd(wss["killed"]), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from the checkpoint at step {first}" in again.stderr
    whole = runner.run_stage("splat", str(wss["whole"]))
    assert whole.status == "succeeded", whole.error

    done = json.loads((wss["killed"] / "splat" / "_SUCCESS.json").read_text())["metrics"]
    assert done["resumed_from_step"] == first and done["steps"] == steps
    assert whole.success["metrics"]["resumed_from_step"] == 0
    a = ply.read_ply(wss["killed"] / "splat" / "point_cloud.ply")
    b = ply.read_ply(wss["whole"] / "splat" / "point_cloud.ply")
    for k in b:
        assert np.array_equal(a[k], b[k]), k
    assert done["heldout_psnr"] == whole.success["metrics"]["heldout_psnr"]
    assert not (wss["killed"] / CHECKPOINTS / "splat").exists()  # spent once the stage succeeded
