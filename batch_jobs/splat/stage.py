"""Stage `splat`: train 3D Gaussians from the SfM model and its images.

Reads `sfm/sparse/0` and `sfm/images/` (and `depth/*.npy` when the depth loss is on); writes
`splat/point_cloud.ply` (standard 3DGS layout), `splat/scene.spz` (Niantic SPZ v3),
`splat/preview.png` (a render from a training camera beside its photo) and
`splat/report.json` (held-out PSNR / SSIM as `heldout_psnr` / `heldout_ssim`, training speed, Gaussian count, parameters).
While it trains it rewrites `splat/live_preview.png` (core.workspace.LIVE_PREVIEW: the same
view's render beside its photo, at most 480 px high) every LIVE_PREVIEWS-th of the steps, and
notes the time in the stage's status (`stages.splat.live_preview_at`), so the status and the
results page show the training as it goes.

Checkpoints (batch_jobs.gaussians.checkpoint): every `checkpoint_steps` steps or
`checkpoint_seconds` seconds, whichever comes first, the whole training state is saved under
`{workspace}/checkpoints/splat/`; a stage that starts (a Batch retry after a Spot preemption)
resumes from the one made from the same inputs and parameters. Each checkpoint also publishes
the current Gaussians as `splat/latest.spz` (core.workspace.LATEST_SPLAT: SH degree 0, at
most LATEST_MAX_GAUSSIANS of the most opaque), noted as `stages.splat.latest_splat_step` and
`latest_splat_at`, so a user sees a real 3D splat within minutes.

On CUDA the renderer is `gsplat.rasterization`; on CPU gsplat's PyTorch reference projection
plus our tiled rasterizer (batch_jobs.gaussians). Every 8th view (by name) is held out of
training and used only for evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs import storage
from batch_jobs.errors import StageError
from batch_jobs.runner import StageContext
from batch_jobs.sparse_model import held_out, read_sparse_model
from core import record as jobrecord
from core.stages import REPORT_FILE
from core.workspace import LATEST_SPLAT, LIVE_PREVIEW

VERSION = 2  # 2: the background is a map of colours over the viewing directions (gaussians.background)

TOO_FEW_VIEWS = "TOO_FEW_VIEWS"
HOLDOUT_EVERY = 8
LIVE_PREVIEWS = 10  # live previews per training run
LIVE_PREVIEW_MIN_STEPS = 50  # never more often than this
LIVE_PREVIEW_MAX_HEIGHT = 480
LATEST_MAX_GAUSSIANS = 200_000  # the snapshot stays a few MB: the most opaque ones, SH degree 0
log = logging.getLogger("batch_jobs.splat.stage")


def _depth_available(depth_dir: Path) -> bool:
    try:
        report = json.loads((depth_dir / REPORT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(report.get("enabled", True)) and any(depth_dir.glob("*.npy"))


def write_preview(path: Path, render_rgb: np.ndarray, photo: np.ndarray) -> None:
    """The render (left) beside the photo (right), 8-bit PNG."""
    path.write_bytes(preview_png(render_rgb, photo))


def preview_png(render_rgb: np.ndarray, photo: np.ndarray, max_height: int | None = None) -> bytes:
    """The render beside the photo as PNG bytes, scaled down to at most `max_height` rows."""
    import cv2

    both = (np.clip(np.concatenate([render_rgb, photo], axis=1), 0, 1) * 255 + 0.5).astype(np.uint8)
    if max_height is not None and both.shape[0] > max_height:
        scale = max_height / both.shape[0]
        both = cv2.resize(both, (max(1, round(both.shape[1] * scale)), max_height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(data)


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from batch_jobs.gaussians import ply, spz
    from batch_jobs.gaussians.camera import load_views
    from batch_jobs.gaussians.checkpoint import CheckpointStore, Saved
    from batch_jobs.gaussians.evaluate import evaluate
    from batch_jobs.gaussians.params import init_params, to_arrays
    from batch_jobs.gaussians.render import render
    from batch_jobs.gaussians.strategy import gaussian_budget
    from batch_jobs.gaussians.trainer import Checkpointing, TrainConfig, Trainer

    started = time.perf_counter()
    p = ctx.params
    device = ctx.device
    steps = int(p["steps"])
    sh_degree = int(p["sh_degree"])
    strategy = str(p["strategy"])
    seed = int(p["seed"])
    torch.manual_seed(seed)

    sfm_dir = ctx.input_dir("sfm")
    with ctx.timed("load"):
        model = read_sparse_model(sfm_dir / "sparse" / "0")
        depth_loss = bool(p["depth_loss"])
        depth_dir = ctx.input_dir("depth") if depth_loss else None
        if depth_dir is not None and not _depth_available(depth_dir):
            log.warning("depth_loss requested but the depth stage wrote no depth maps; training without it")
            depth_loss, depth_dir = False, None
        views = load_views(model, sfm_dir / "images", int(p["max_long_side"]), depth_dir)
    if len(views) < 2:
        raise StageError(TOO_FEW_VIEWS, f"splatting needs at least 2 registered views, got {len(views)}")
    if len(views) >= 3:
        test = [v for i, v in enumerate(views) if held_out(i, HOLDOUT_EVERY)]
        train_views = [v for i, v in enumerate(views) if not held_out(i, HOLDOUT_EVERY)]
    else:  # too few to hold any out
        test, train_views = [], list(views)
    if device == "cuda":
        for v in views:
            v.image = v.photo().to(device)
            v.depth = v.depth.to(device) if v.depth is not None else None

    _, scene_scale = model.scene_extent()
    mcmc = strategy == "mcmc"
    params = init_params(model.points, model.colors, sh_degree, seed=seed, device=device,
                         init_opacity=0.5 if mcmc else 0.1, init_scale=0.1 if mcmc else 1.0)
    # Never under the SfM points the training starts from: the cap bounds growth only.
    cap = max(gaussian_budget(int(p["cap_max"]), float(p["cap_per_pixel"]),
                              sum(v.width * v.height for v in train_views)), int(model.points.shape[0]))
    cfg = TrainConfig(steps=steps, sh_degree=sh_degree, strategy=strategy, depth_loss=depth_loss,
                      cap_max=cap, seed=seed, opacity_reset=bool(p["opacity_reset"]))
    trainer = Trainer(params, train_views, cfg, scene_scale)
    store = CheckpointStore(ctx.checkpoint_uri(), ctx.key_digest)
    saves: list[Saved] = []
    first_snapshot: list[float] = []  # seconds from the stage's start to its first published snapshot

    def publish_latest(step: int) -> None:
        try:
            data = spz.snapshot(to_arrays(params), LATEST_MAX_GAUSSIANS)
            storage.write_bytes(storage.join(ctx.workspace, LATEST_SPLAT), data, "application/octet-stream")
            ctx.progress.note(jobrecord.STAGE_LATEST_SPLAT_STEP_KEY, step)
            ctx.progress.note(jobrecord.STAGE_LATEST_SPLAT_KEY, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            if not first_snapshot:
                first_snapshot.append(time.perf_counter() - started)
        except Exception as exc:  # a snapshot is a courtesy: it never fails the training
            log.warning("latest splat not written: %s", exc)

    def save(step: int, state: dict[str, Any]) -> None:
        with ctx.timed("checkpoint"):
            saves.append(store.save(step, state))
        publish_latest(step)

    with ctx.timed("resume"):
        loaded = store.load()
    resumed_from = 0
    if loaded is not None:
        trainer.load_state_dict(loaded.state)
        resumed_from = loaded.step
        publish_latest(loaded.step)
        ctx.progress.update(0.02 + 0.88 * loaded.step / steps, f"resumed from the checkpoint at step {loaded.step}")
    else:
        ctx.progress.update(0.02, f"training {len(params['means'])} Gaussians on {len(train_views)} views ({device})")

    live_view = train_views[len(train_views) // 2]
    live_every = max(LIVE_PREVIEW_MIN_STEPS, steps // LIVE_PREVIEWS)

    def live_preview() -> None:
        try:
            with torch.no_grad():
                out = render(params, live_view, sh_degree, background=trainer.background)
            data = preview_png(out.rgb.detach().cpu().numpy(), live_view.photo().cpu().numpy(),
                               LIVE_PREVIEW_MAX_HEIGHT)
            storage.write_bytes(storage.join(ctx.workspace, LIVE_PREVIEW), data, "image/png")
            ctx.progress.note(jobrecord.STAGE_LIVE_PREVIEW_KEY,
                              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        except Exception as exc:  # a preview is a courtesy: it never fails the training
            log.warning("live preview not written: %s", exc)

    def on_step(step: int, total: int, message: str) -> None:
        ctx.progress.update(0.02 + 0.88 * step / total, message)
        if step % live_every == 0 and step < total:
            live_preview()

    with ctx.timed("train"):
        stats = trainer.run(on_step, Checkpointing(int(p["checkpoint_steps"]), float(p["checkpoint_seconds"]), save))

    ctx.progress.update(0.9, f"evaluating on {len(test)} held-out views")
    background = trainer.background
    with ctx.timed("evaluate"):
        held = evaluate(params, test, sh_degree, background)
        seen = evaluate(params, train_views[:: max(1, len(train_views) // 8)], sh_degree, background)

    ctx.progress.update(0.95, "exporting")
    with ctx.timed("export"):
        arrays = to_arrays(params)
        ply.write_ply(ctx.out_dir / "point_cloud.ply", arrays)
        spz.write_spz(ctx.out_dir / "scene.spz", arrays, version=3)
        pv = train_views[len(train_views) // 2]
        with torch.no_grad():
            out = render(params, pv, sh_degree, background=background)
        write_preview(ctx.out_dir / "preview.png", out.rgb.detach().cpu().numpy(), pv.photo().cpu().numpy())

    # The headline figures are top-level scalars: the workflow forwards this dict to the status
    # (`metrics.splat`), which keeps scalars only.
    metrics = {
        "heldout_psnr": held["psnr"],
        "heldout_ssim": held["ssim"],
        "train_psnr": seen["psnr"],
        "gaussians": stats.n_gaussians,
        "gaussian_cap": cap,
        "steps": stats.steps,
        "steps_per_s": round(stats.steps_per_s, 3),
        "train_seconds": round(stats.seconds, 2),
        "device": device,
        "renderer": "gsplat.rasterization (CUDA)" if device == "cuda" else "cpu tiled rasterizer (numba)",
        "n_train_views": len(train_views),
        "n_test_views": len(test),
        "resumed_from_step": resumed_from,
        "checkpoints": len(saves),
        "checkpoint_mb": round(saves[-1].bytes / 1e6, 3) if saves else 0.0,
        "checkpoint_seconds": round(sum(s.seconds for s in saves), 3),
        "first_snapshot_s": round(first_snapshot[0], 2) if first_snapshot else None,
    }
    report = {
        **metrics,
        "strategy": strategy,
        "sh_degree": sh_degree,
        "depth_loss": depth_loss,
        "resolution": [views[0].width, views[0].height],
        "scene_scale": round(scene_scale, 6),
        "initial_gaussians": int(model.points.shape[0]),
        "peak_gaussians": stats.peak_gaussians,
        "background": stats.background,
        "loss_history": stats.loss_history,
        "held_out": held,
        "train_sample": seen,
        "preview_view": pv.name,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ctx.write_report(report)
    return metrics
