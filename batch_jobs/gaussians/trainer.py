"""The training loop: one view per step, L1 + SSIM (+ depth), Adam, densification.

The learning rates are gsplat's `simple_trainer` defaults (means scaled by the scene size and
decayed 100x over the run); the SH degree grows one band at a time over the first half of
the run. On CUDA the renderer is `gsplat.rasterization`; on CPU our tiled rasterizer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from batch_jobs.gaussians import losses
from batch_jobs.gaussians.camera import View
from batch_jobs.gaussians.render import render
from batch_jobs.gaussians.strategy import make_strategy

log = logging.getLogger("batch_jobs.gaussians.trainer")


@dataclass
class TrainConfig:
    steps: int
    sh_degree: int = 3
    strategy: str = "default"  # or "mcmc"
    depth_loss: bool = False
    depth_lambda: float = 0.05
    ssim_lambda: float = 0.2
    cap_max: int = 300_000
    seed: int = 0
    lr_means: float = 1.6e-4  # times the scene scale
    lr_means_final: float = 0.01  # fraction of lr_means reached at the last step
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20
    mcmc_opacity_reg: float = 0.01
    mcmc_scale_reg: float = 0.01
    learn_background: bool = True  # one RGB colour behind everything (sky), optimised with the rest
    lr_background: float = 1e-2

    def sh_degree_at(self, step: int) -> int:
        """One more band every (steps / 2) / degree steps, all of them by half-way."""
        if self.sh_degree == 0:
            return 0
        interval = max(1, min(1000, self.steps // (2 * self.sh_degree)))
        return min(self.sh_degree, step // interval)


@dataclass
class TrainStats:
    steps: int = 0
    seconds: float = 0.0
    n_gaussians: int = 0
    peak_gaussians: int = 0
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    loss_history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def make_optimizers(params: torch.nn.ParameterDict, scene_scale: float, cfg: TrainConfig) -> dict[str, torch.optim.Adam]:
    lrs = {"means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_sh_rest}
    # One optimiser per tensor: the strategies replace tensors and their Adam state by name.
    return {name: torch.optim.Adam([{"params": params[name], "lr": lrs[name], "name": name}], eps=1e-15)
            for name in params}


def train(params: torch.nn.ParameterDict, views: Sequence[View], cfg: TrainConfig, scene_scale: float,
          progress: Callable[[int, int, str], None] | None = None) -> TrainStats:
    """Optimise `params` in place (the dict's tensors are replaced as Gaussians are added/removed)."""
    if not views:
        raise ValueError("no training views")
    optimizers = make_optimizers(params, scene_scale, cfg)
    means_sched = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"],
                                                         gamma=cfg.lr_means_final ** (1.0 / max(1, cfg.steps)))
    strategy, state = make_strategy(cfg.strategy, cfg.steps, scene_scale, cfg.cap_max)
    strategy.check_sanity(params, optimizers)
    dev = params["means"].device
    # Start the background at the photos' mean colour; it then follows whatever no Gaussian covers.
    init_bg = torch.stack([v.image.reshape(-1, 3).mean(dim=0) for v in views]).mean(dim=0)
    background = init_bg.to(dev).requires_grad_(cfg.learn_background)
    bg_opt = torch.optim.Adam([background], lr=cfg.lr_background, eps=1e-15) if cfg.learn_background else None
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    stats = TrainStats()
    t0 = time.perf_counter()
    running = 0.0
    for step in range(cfg.steps):
        if not order:
            order = torch.randperm(len(views), generator=gen).tolist()
        view = views[order.pop()]
        image = view.image.to(dev)
        use_depth = cfg.depth_loss and view.depth is not None
        out = render(params, view, cfg.sh_degree_at(step), with_depth=use_depth, background=background)
        strategy.step_pre_backward(params, optimizers, state, step, out.info)
        loss = losses.photometric(out.rgb, image, cfg.ssim_lambda)
        if use_depth:
            loss = loss + cfg.depth_lambda * losses.depth_loss(out.depth, out.alpha, view.depth.to(image.device))
        if cfg.strategy == "mcmc":
            loss = loss + cfg.mcmc_opacity_reg * torch.sigmoid(params["opacities"]).mean()
            loss = loss + cfg.mcmc_scale_reg * torch.exp(params["scales"]).mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if bg_opt is not None:
            bg_opt.step()
            bg_opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                background.clamp_(0.0, 1.0)
        means_sched.step()
        if cfg.strategy == "mcmc":
            strategy.step_post_backward(params, optimizers, state, step, out.info, lr=means_sched.get_last_lr()[0])
        else:
            strategy.step_post_backward(params, optimizers, state, step, out.info, packed=False)

        running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
        n = len(params["means"])
        stats.peak_gaussians = max(stats.peak_gaussians, n)
        if step % 50 == 0 or step == cfg.steps - 1:
            stats.loss_history.append((step, round(running, 5)))
        if progress is not None:
            progress(step + 1, cfg.steps, f"step {step + 1}/{cfg.steps}, loss {running:.4f}, {n} Gaussians")
    stats.steps = cfg.steps
    stats.seconds = time.perf_counter() - t0
    stats.n_gaussians = len(params["means"])
    stats.background = [round(float(x), 5) for x in background.detach().cpu()]
    return stats
