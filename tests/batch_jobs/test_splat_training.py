"""Training on CPU: losses, densification (gsplat's strategies on CPU tensors), the trainer, the stage wiring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from workspace_fixture import SMALL, GTWorkspace, small_gt_workspace  # noqa: F401 (fixture)

from batch_jobs import runner
from batch_jobs.gaussians import losses, ply, spz
from batch_jobs.gaussians.background import Background
from batch_jobs.gaussians.camera import load_views
from batch_jobs.gaussians.evaluate import evaluate
from batch_jobs.gaussians.params import init_params
from batch_jobs.gaussians.strategy import binomials, gaussian_budget, relocation_torch
from batch_jobs.gaussians.trainer import TrainConfig, train
from batch_jobs.sparse_model import held_out, read_sparse_model
from core.batch_task import EXIT_BAD_INPUT

# Each trains for real on CPU: part of `make test`, not of `make check`.
pytestmark = pytest.mark.slow


def test_ssim_and_psnr() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 50, 3, generator=g)
    assert float(losses.ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
    b = (a + 0.1 * torch.randn(40, 50, 3, generator=g)).clamp(0, 1)
    assert 0.3 < float(losses.ssim(a, b)) < 0.95
    assert losses.psnr(torch.full((4, 4, 3), 0.5), torch.full((4, 4, 3), 0.6)) == pytest.approx(20.0, abs=1e-4)


def test_gaussian_budget_scales_with_the_training_pixels() -> None:
    assert gaussian_budget(40_000, 0.02, 9 * 320 * 237) == 13_651  # kermit's 9 training views at preview
    assert gaussian_budget(40_000, 0.02, 35 * 320 * 180) == 40_000  # fox's 35: the preset's cap binds
    assert gaussian_budget(40_000, 0.0, 100) == 40_000  # no per-pixel limit (the GPU presets)
    assert gaussian_budget(0, 0.02, 1000) == 20  # no cap: the per-pixel limit alone
    assert gaussian_budget(40_000, 0.02, 10) == 1


def test_relocation_matches_the_mcmc_formula() -> None:
    """Eq. 9 of 3DGS-MCMC, evaluated term by term, against our vectorised CPU version."""
    g = torch.Generator().manual_seed(0)
    n = 64
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) + 0.1
    ratios = torch.randint(1, 20, (n,), generator=g)
    binoms = binomials().double()
    new_o, new_s = relocation_torch(opac, scales, ratios, binoms)
    for i in range(n):
        k_n = int(ratios[i])
        o = float(opac[i])
        no = 1 - (1 - o) ** (1 / k_n)
        denom = sum(math.comb(j - 1, k) * (-1) ** k / math.sqrt(k + 1) * no ** (k + 1)
                    for j in range(1, k_n + 1) for k in range(j))
        assert float(new_o[i]) == pytest.approx(no, rel=1e-9)
        assert new_s[i].tolist() == pytest.approx((o / denom * scales[i]).tolist(), rel=1e-7)


@pytest.fixture(scope="module")
def small_scene() -> tuple:
    from workspace_fixture import cached_gt_workspace

    gt = cached_gt_workspace(SMALL)
    model = read_sparse_model(gt.workspace / "sfm" / "sparse" / "0")
    views = load_views(model, gt.workspace / "sfm" / "images", 120)
    return model, views


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_training_on_cpu_lowers_the_loss_and_densifies(small_scene: tuple, strategy: str) -> None:
    model, views = small_scene
    train_views = [v for i, v in enumerate(views) if not held_out(i)]
    params = init_params(model.points, model.colors, sh_degree=1, init_opacity=0.5 if strategy == "mcmc" else 0.1,
                         init_scale=0.1 if strategy == "mcmc" else 1.0)
    n0 = len(params["means"])
    before = evaluate(params, train_views, 0)["psnr"]
    stats = train(params, train_views, TrainConfig(steps=90, sh_degree=1, strategy=strategy, depth_loss=False, seed=0, opacity_reset=False, cap_max=int(n0 * 1.5)),
                  scene_scale=model.scene_extent()[1])
    after = evaluate(params, train_views, 1, Background.from_json(stats.background))["psnr"]
    assert after > before + 3, (before, after)
    assert stats.loss_history[-1][1] < stats.loss_history[0][1]
    n1 = len(params["means"])
    assert n1 != n0 and n1 <= 1.6 * n0  # densification ran, and the cap held
    assert all(len(params[k]) == n1 for k in params)
    assert all(torch.isfinite(p).all() for p in params.values())


def test_depth_loss_pulls_rendered_depth_to_the_target(small_scene: tuple) -> None:
    """Depth supervision with the true depth maps makes rendered depth closer to them."""
    from workspace_fixture import cached_gt_workspace

    from batch_jobs.gaussians.render import render

    gt = cached_gt_workspace(SMALL)
    model, views = small_scene
    for v in views:
        import cv2

        v.depth = torch.from_numpy(cv2.resize(gt.true_depth(v.name), (v.width, v.height),
                                              interpolation=cv2.INTER_NEAREST))
    errs = {}
    for use in (False, True):
        params = init_params(model.points, model.colors, sh_degree=0, seed=1)
        train(params, views, TrainConfig(steps=60, sh_degree=0, strategy="default", depth_loss=use, seed=0, opacity_reset=False, depth_lambda=0.5, cap_max=1),
              scene_scale=model.scene_extent()[1])
        rel = []
        with torch.no_grad():
            for v in views:
                out = render(params, v, 0, with_depth=True)
                ok = (v.depth > 0) & (out.alpha[..., 0] > 0.5)
                rel.append(((out.depth[ok] - v.depth[ok]).abs() / v.depth[ok]).median().item())
        errs[use] = float(np.mean(rel))
    for v in views:
        v.depth = None
    assert errs[True] < 0.75 * errs[False], errs  # measured: 0.024 vs 0.046


def test_splat_stage_outputs_quick(small_gt_workspace: GTWorkspace, tmp_path: Path,  # noqa: F811
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A short run through the runner: every output, readable, consistent (quality is in test_splat_quality)."""
    from batch_jobs.depth.model import build_untrained_model

    ws = small_gt_workspace.workspace
    monkeypatch.setenv("DEPTH_MODEL", str(build_untrained_model(tmp_path / "model")))
    assert runner.run_stage("depth", str(ws)).status == "succeeded"
    res = runner.run_stage("splat", str(ws), options={"splat_steps": 40, "splat_strategy": "mcmc",
                                                      "depth_loss": True, "sh_degree": 2})
    assert res.status == "succeeded", res.error
    out = ws / "splat"
    assert {"point_cloud.ply", "scene.spz", "preview.png", "report.json", "_SUCCESS.json"} <= {
        p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    m = res.success["metrics"]
    assert report["strategy"] == "mcmc" and report["depth_loss"] is True and report["sh_degree"] == 2
    assert m["n_test_views"] == 2 and m["n_train_views"] == SMALL.n_frames - 2  # views 0 and 8 held out
    assert set(report["held_out"]["views"]) == {small_gt_workspace.names[0], small_gt_workspace.names[8]}
    assert m["heldout_psnr"] is not None and m["steps"] == 40
    params = res.success["params"]  # the cap follows the training pixels, within the preset's cap
    pixels = m["n_train_views"] * report["resolution"][0] * report["resolution"][1]
    assert m["gaussian_cap"] == max(gaussian_budget(params["cap_max"], params["cap_per_pixel"], pixels),
                                    report["initial_gaussians"])
    cloud = ply.read_ply(out / "point_cloud.ply")
    assert len(cloud["means"]) == m["gaussians"] and cloud["shN"].shape[1] == 8
    packed = spz.read_spz(out / "scene.spz")
    assert len(packed["means"]) == m["gaussians"] and np.abs(packed["means"] - cloud["means"]).max() < 1e-3
    import cv2

    preview = cv2.imread(str(out / "preview.png"))
    assert preview.shape == (SMALL.height, 2 * SMALL.width, 3)


def test_depth_loss_without_depth_maps_trains_without_it(small_gt_workspace: GTWorkspace) -> None:  # noqa: F811
    ws = small_gt_workspace.workspace
    assert runner.run_stage("depth", str(ws), options={"depth": False}).status == "succeeded"
    res = runner.run_stage("splat", str(ws), options={"depth": False, "depth_loss": True, "splat_steps": 10,
                                                      "sh_degree": 0})
    assert res.status == "succeeded", res.error
    assert json.loads((ws / "splat" / "report.json").read_text())["depth_loss"] is False


def test_splat_stage_on_a_broken_model_is_bad_input(small_gt_workspace: GTWorkspace) -> None:  # noqa: F811
    ws = small_gt_workspace.workspace
    (ws / "depth").mkdir()
    (ws / "depth" / "_SUCCESS.json").write_text("{}")
    for f in (ws / "sfm" / "sparse" / "0").iterdir():
        f.unlink()
    res = runner.run_stage("splat", str(ws))
    assert res.exit_code == EXIT_BAD_INPUT and res.error["code"] == "BAD_SPARSE_MODEL"
