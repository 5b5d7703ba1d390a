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
from typing import Any

import torch

from batch_jobs.gaussians import losses
from batch_jobs.gaussians.background import Background
from batch_jobs.gaussians.camera import View
from batch_jobs.gaussians.render import render
from batch_jobs.gaussians.strategy import make_strategy

log = logging.getLogger("batch_jobs.gaussians.trainer")


@dataclass(kw_only=True)
class TrainConfig:
    # The splat stage's registered parameters (core.stages, the splat stage's presets): no second default here.
    steps: int
    sh_degree: int
    strategy: str  # "default" or "mcmc"
    depth_loss: bool
    cap_max: int
    seed: int
    opacity_reset: bool
    # The recipe's constants, not request parameters.
    depth_lambda: float = 0.05
    ssim_lambda: float = 0.2
    lr_means: float = 1.6e-4  # times the scene scale
    lr_means_final: float = 0.01  # fraction of lr_means reached at the last step
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20
    mcmc_opacity_reg: float = 0.01
    mcmc_scale_reg: float = 0.01
    lr_background: float = 1e-2  # the background map's colours (background.Background)

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
    background: dict[str, Any] = field(default_factory=dict)  # Background.to_json()
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


@dataclass(frozen=True)
class Checkpointing:
    """Save the whole training state every `every_steps` steps or `every_seconds` seconds,
    whichever comes first (`save(step, state)`; checkpoint.CheckpointStore.save)."""

    every_steps: int
    every_seconds: float
    save: Callable[[int, dict[str, Any]], Any]


class Trainer:
    """One training run, resumable: everything that decides its next step is in `state_dict`.

    Stopped after step k and resumed from its state, a run on the CPU ends with the same
    parameters as one never stopped (tests/batch_jobs/test_splat_training.py holds it)."""

    def __init__(self, params: torch.nn.ParameterDict, views: Sequence[View], cfg: TrainConfig,
                 scene_scale: float) -> None:
        if not views:
            raise ValueError("no training views")
        self.params, self.views, self.cfg, self.scene_scale = params, views, cfg, scene_scale
        self.optimizers = make_optimizers(params, scene_scale, cfg)
        self.means_sched = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizers["means"], gamma=cfg.lr_means_final ** (1.0 / max(1, cfg.steps)))
        self.strategy, self.strategy_state = make_strategy(cfg.strategy, cfg.steps, scene_scale, cfg.cap_max,
                                                           opacity_reset=cfg.opacity_reset)
        self.strategy.check_sanity(params, self.optimizers)
        dev = params["means"].device
        # The background starts as the photos' mean colour in every direction and learns the
        # directions the photos show uncovered (background.py says why).
        self.background = Background.mean_of(views).to(dev).learnable()
        self.bg_opt = torch.optim.Adam([self.background.texture], lr=cfg.lr_background, eps=1e-15)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.order: list[int] = []
        self.step = 0
        self.running = 0.0
        self.stats = TrainStats()

    # -- the state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on, as tensors and plain values (torch.save-able)."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "step": self.step,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "means_sched": self.means_sched.state_dict(),
            "strategy_state": dict(self.strategy_state),
            "background": self.background.texture.detach().clone(),
            "bg_opt": self.bg_opt.state_dict(),
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
            "order": list(self.order),
            "running": self.running,
            "stats": {"seconds": self.stats.seconds, "peak_gaussians": self.stats.peak_gaussians,
                      "loss_history": [list(x) for x in self.stats.loss_history]},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.params["means"].device
        for k, v in state["params"].items():  # the strategies replace tensors: shapes may have grown
            self.params[k] = torch.nn.Parameter(v.to(dev))
        self.optimizers = make_optimizers(self.params, self.scene_scale, self.cfg)
        self.means_sched = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizers["means"], gamma=self.cfg.lr_means_final ** (1.0 / max(1, self.cfg.steps)))
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])  # the learning rates too
        self.means_sched.load_state_dict(state["means_sched"])
        self.strategy_state.clear()
        self.strategy_state.update({k: v.to(dev) if isinstance(v, torch.Tensor) else v
                                    for k, v in state["strategy_state"].items()})
        with torch.no_grad():
            self.background.texture.copy_(state["background"].to(dev))
        self.bg_opt.load_state_dict(state["bg_opt"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.order = list(state["order"])
        self.step = int(state["step"])
        self.running = float(state["running"])
        st = state["stats"]
        self.stats = TrainStats(seconds=float(st["seconds"]), peak_gaussians=int(st["peak_gaussians"]),
                                loss_history=[(int(a), float(b)) for a, b in st["loss_history"]])

    # -- training -------------------------------------------------------------------------------
    def one_step(self) -> float:
        """Train step `self.step` on the next view; returns its loss."""
        cfg, params, optimizers, step = self.cfg, self.params, self.optimizers, self.step
        if not self.order:
            self.order = torch.randperm(len(self.views), generator=self.gen).tolist()
        view = self.views[self.order.pop()]
        dev = params["means"].device
        image = view.photo().to(dev)
        depth = view.depth if cfg.depth_loss else None
        out = render(params, view, cfg.sh_degree_at(step), with_depth=depth is not None,
                     background=self.background)
        self.strategy.step_pre_backward(params, optimizers, self.strategy_state, step, out.info)
        loss = losses.photometric(out.rgb, image, cfg.ssim_lambda)
        if depth is not None:
            assert out.depth is not None  # rendered with_depth
            loss = loss + cfg.depth_lambda * losses.depth_loss(out.depth, out.alpha, depth.to(image.device))
        if cfg.strategy == "mcmc":
            loss = loss + cfg.mcmc_opacity_reg * torch.sigmoid(params["opacities"]).mean()
            loss = loss + cfg.mcmc_scale_reg * torch.exp(params["scales"]).mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.bg_opt.step()
        self.bg_opt.zero_grad(set_to_none=True)
        self.means_sched.step()
        if cfg.strategy == "mcmc":
            self.strategy.step_post_backward(params, optimizers, self.strategy_state, step, out.info,
                                             lr=self.means_sched.get_last_lr()[0])
        else:
            self.strategy.step_post_backward(params, optimizers, self.strategy_state, step, out.info, packed=False)
        value = float(loss.item())
        self.running = 0.9 * self.running + 0.1 * value if step else value
        n = len(params["means"])
        self.stats.peak_gaussians = max(self.stats.peak_gaussians, n)
        if step % 50 == 0 or step == cfg.steps - 1:
            self.stats.loss_history.append((step, round(self.running, 5)))
        self.step += 1
        return value

    def run(self, progress: Callable[[int, int, str], None] | None = None,
            checkpointing: Checkpointing | None = None, stop_after: int | None = None) -> TrainStats:
        """Train from `self.step` to the end (or through step `stop_after`, for tests)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        seconds_before = self.stats.seconds
        last_saved, last_saved_at = self.step, time.monotonic()
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        while self.step < end:
            self.one_step()
            self.stats.seconds = seconds_before + time.perf_counter() - t0
            if progress is not None:
                progress(self.step, cfg.steps, f"step {self.step}/{cfg.steps}, loss {self.running:.4f}, "
                                               f"{len(self.params['means'])} Gaussians")
            if checkpointing is not None and self.step < cfg.steps and (
                    self.step - last_saved >= checkpointing.every_steps
                    or time.monotonic() - last_saved_at >= checkpointing.every_seconds):
                checkpointing.save(self.step, self.state_dict())
                last_saved, last_saved_at = self.step, time.monotonic()
        self.stats.steps = self.step
        self.stats.n_gaussians = len(self.params["means"])
        self.stats.background = self.background.to_json()
        return self.stats


def train(params: torch.nn.ParameterDict, views: Sequence[View], cfg: TrainConfig, scene_scale: float,
          progress: Callable[[int, int, str], None] | None = None) -> TrainStats:
    """Optimise `params` in place (the dict's tensors are replaced as Gaussians are added/removed)."""
    return Trainer(params, views, cfg, scene_scale).run(progress)
