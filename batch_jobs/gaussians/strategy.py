"""Densification: gsplat's `DefaultStrategy` (3DGS clone/split/prune) or `MCMCStrategy`, on any device.

Both strategies are plain PyTorch on the parameter and optimiser tensors; they read from the
render's `info` the 2D means' gradient, the radii, the image size and the camera count, which
our CPU renderer provides in gsplat's layout. Two helpers the MCMC strategy calls are CUDA
kernels in gsplat 1.5.3 (`compute_relocation` and `quat_scale_to_covar_preci`);
`enable_cpu_mcmc` routes their CPU calls to PyTorch versions (the relocation formula of
Eq. 9 in "3D Gaussian Splatting as Markov Chain Monte Carlo", the covariance from gsplat's
reference implementation) and leaves CUDA calls untouched. What of this reaches inside gsplat
(the routing, the default strategy's growth hook) is in `gsplat_internals`.

Schedules are scaled to the run's length: a 600-step preview densifies early and often, a
30k-step run uses the 3DGS numbers. The default strategy's opacity reset, which gsplat 1.5.3
skips, is `gsplat_internals.DefaultStrategyGrowth`'s, asked for by the registry's `opacity_reset`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import MCMCStrategy

from batch_jobs.gaussians import gsplat_internals


@dataclass
class CappedDefaultStrategy(gsplat_internals.DefaultStrategyGrowth):
    """DefaultStrategy that never grows past `cap_max` Gaussians (pruning goes on).

    When more Gaussians qualify than the cap leaves room for, only those with the largest
    image-plane gradients grow (each clone or split adds exactly one Gaussian).
    """

    cap_max: int = 0

    @torch.no_grad()
    def grow(self, params: Any, optimizers: Any, state: dict[str, Any], step: int) -> tuple[int, int]:
        if not self.cap_max:
            return self.default_grow(params, optimizers, state, step)
        budget = self.cap_max - len(params["means"])
        if budget <= 0:
            return 0, 0
        grads = gsplat_internals.mean_grad2d(state)
        if int((grads > self.grow_grad2d).sum()) <= budget:
            return self.default_grow(params, optimizers, state, step)
        threshold = max(self.grow_grad2d, float(torch.topk(grads, budget + 1).values[-1]))
        return self.default_grow(params, optimizers, state, step, grad_threshold=threshold)


def gaussian_budget(cap_max: int, per_pixel: float, pixels: int) -> int:
    """The most Gaussians a run may grow: `cap_max` (0: no cap), lowered to `per_pixel` Gaussians
    per training pixel when that is smaller (`per_pixel` 0: not lowered). A capture of few
    photos has few pixels to constrain its Gaussians: measured on kermit's 9 training views at
    preview (docs/benchmarks.md, "Splat against OpenSplat"), 12,000 Gaussians reached 20.77 dB
    held out in 64 s of training, the 40,000 cap 21.22 dB in 101 s."""
    if per_pixel <= 0:
        return cap_max
    scaled = max(1, round(per_pixel * pixels))
    return min(cap_max, scaled) if cap_max > 0 else scaled


def schedule(steps: int) -> dict[str, int]:
    """Refinement start / stop / interval for a run of `steps`."""
    return {
        "refine_start_iter": min(500, max(10, steps // 10)),
        "refine_stop_iter": min(15_000, int(steps * 0.75)),
        "refine_every": min(100, max(10, steps // 30)),
    }


# The fewest steps between two opacity resets: after a reset the opacities must grow back from
# 0.01. Measured at `preview` (docs/benchmarks.md, "Splat against OpenSplat"): resets every 75
# steps (300-step runs) cost 0.05 and 0.33 dB held out; every 250 steps, -0.15 to +0.81 dB.
MIN_RESET_INTERVAL = 250


def make_strategy(name: str, steps: int, scene_scale: float, cap_max: int, *,
                  opacity_reset: bool) -> tuple[Any, dict[str, Any]]:
    """(strategy, its state) for `name` in {"default", "mcmc"}; `opacity_reset`: the default
    strategy's 3DGS opacity reset every `reset_every` steps, if that is at least
    `MIN_RESET_INTERVAL` (MCMC has none)."""
    sched = schedule(steps)
    if name == "default":
        reset_every = min(3000, max(1, steps // 4))
        strategy = CappedDefaultStrategy(cap_max=cap_max, reset_every=reset_every,
                                         opacity_reset=opacity_reset and reset_every >= MIN_RESET_INTERVAL,
                                         **sched)
        return strategy, strategy.initialize_state(scene_scale=scene_scale)
    if name == "mcmc":
        enable_cpu_mcmc()
        strategy = MCMCStrategy(cap_max=cap_max, **sched)
        return strategy, strategy.initialize_state()
    raise ValueError(f"unknown densification strategy {name!r} (default or mcmc)")


def relocation_torch(opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor,
                     binoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 of the 3DGS-MCMC paper: opacity and scale of a Gaussian split into `ratio` copies.

    new_o = 1 - (1 - o)^(1/n);  new_s = s * o / sum_{i=1..n} sum_{k<i} C(i-1, k) (-1)^k new_o^(k+1) / sqrt(k+1)
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / n.to(opacities.dtype))
    # sum over i = 1..n of C(i-1, k): a cumulative table cum[n-1, k]
    cum = torch.cumsum(binoms.to(opacities.dtype), dim=0)  # cum[m, k] = sum_{i<=m} C(i, k)
    k = torch.arange(n_max, dtype=opacities.dtype, device=opacities.device)
    sign_root = torch.where(k.long() % 2 == 0, 1.0, -1.0).to(opacities.dtype) / torch.sqrt(k + 1)
    powers = new_o[:, None] ** (k[None, :] + 1)  # [N, n_max]
    denom = (cum[n - 1] * sign_root[None, :] * powers).sum(dim=1)
    new_s = (opacities / denom)[:, None] * scales
    return new_o, new_s


def enable_cpu_mcmc() -> None:
    """Route gsplat's MCMC helpers to PyTorch for CPU tensors (idempotent; CUDA unchanged)."""
    gsplat_internals.route_mcmc_ops_to_cpu(relocation_torch)


def binomials(n_max: int = 51) -> torch.Tensor:
    """C(n, k) table as MCMCStrategy builds it (for tests of relocation_torch)."""
    out = torch.zeros(n_max, n_max)
    for n in range(n_max):
        for k in range(n + 1):
            out[n, k] = math.comb(n, k)
    return out
