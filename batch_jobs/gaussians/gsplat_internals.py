"""Every use of gsplat's internals, in one place: written against gsplat 1.5.3 (pinned, exactly).

Why we reach inside gsplat's public API:

- The CPU path (no CUDA) projects Gaussians through gsplat's PyTorch reference functions in the
  private module `gsplat.cuda._torch_impl` (`_quat_scale_to_covar_preci`,
  `_fully_fused_projection`, `_spherical_harmonics`): the same maths as the CUDA kernels, with
  autograd, so the CPU and CUDA paths agree. gsplat's public functions of the same names call
  the CUDA extension only.
- `MCMCStrategy` calls two CUDA-only kernels through module globals of `gsplat.strategy.ops`
  (`compute_relocation` in `relocate` and `sample_add`, `quat_scale_to_covar_preci` in
  `inject_noise_to_position`); `route_mcmc_ops_to_cpu` replaces those two globals with
  dispatchers that keep the CUDA kernel for CUDA tensors and run PyTorch on CPU tensors.
- `DefaultStrategy` grows Gaussians (clone + split) in its private method `_grow_gs`, which
  `step_post_backward` calls and which reads `self.grow_grad2d` and the state's `grad2d` and
  `count`; `DefaultStrategyGrowth` turns that method into a hook (`grow`) a subclass overrides,
  and `mean_grad2d` reads that state.
- `DefaultStrategy.step_post_backward` in 1.5.3 never performs the 3DGS opacity reset its
  `reset_every` documents: its test `step % self.reset_every == 0 & step > 0` parses as
  `step % reset_every == (0 & step) > 0`, always false. `DefaultStrategyGrowth` performs it
  (`reset_opacities`, with gsplat's own `ops.reset_opa`) when `opacity_reset` is set;
  tests/batch_jobs/test_gsplat_internals.py holds that gsplat's own still does not, so a
  release that fixes it is noticed (then both would reset).

Nothing of this is gsplat's public API, so any gsplat release may change it: pyproject.toml's
`jobs` extra and constraints.txt pin gsplat to `GSPLAT_VERSION`, and
tests/batch_jobs/test_gsplat_internals.py checks every symbol used here (that it exists, its
parameters, how gsplat itself calls it) and that the installed gsplat is the pinned one, naming
the symbol that changed. Upgrading gsplat means re-reading these symbols in the new release,
then moving the pin and `GSPLAT_VERSION` together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gsplat.strategy.ops as _strategy_ops
import torch
from gsplat.cuda import _torch_impl
from gsplat.strategy import DefaultStrategy

GSPLAT_VERSION = "1.5.3"  # the release this module was written against (and the pin)

# -- gsplat.cuda._torch_impl: PyTorch reference implementations (autograd, any device) --------


def quat_scale_to_covar_preci(quats: torch.Tensor, scales: torch.Tensor, compute_covar: bool = True,
                              compute_preci: bool = True,
                              triu: bool = False) -> tuple[Any, Any]:
    """(covariances [..., 3, 3], precisions [..., 3, 3]) of unit quaternions and scales; the one
    not computed is None (`gsplat.cuda._torch_impl._quat_scale_to_covar_preci`)."""
    return _torch_impl._quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


def fully_fused_projection(means: torch.Tensor, covars: torch.Tensor, viewmats: torch.Tensor,
                           Ks: torch.Tensor, width: int, height: int, *, eps2d: float = 0.3,
                           near_plane: float = 0.01, far_plane: float = 1e10) -> tuple[torch.Tensor, ...]:
    """Pinhole EWA projection of means [N, 3] and covariances [N, 3, 3] into C cameras
    (viewmats [C, 4, 4], Ks [C, 3, 3]): (radii [C, N, 2] int, 0 where culled; means2d [C, N, 2];
    depths [C, N]; conics [C, N, 3]; compensations, None)
    (`gsplat.cuda._torch_impl._fully_fused_projection`)."""
    return _torch_impl._fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d=eps2d,
                                               near_plane=near_plane, far_plane=far_plane)


def spherical_harmonics(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colours [..., 3] of SH coefficients [..., K, 3] up to `degree` in directions [..., 3]
    (unnormalised; `gsplat.cuda._torch_impl._spherical_harmonics`)."""
    return _torch_impl._spherical_harmonics(degree, dirs, coeffs)


# -- gsplat.strategy.ops: the MCMC strategy's CUDA-only helpers --------------------------------

# The module globals of gsplat.strategy.ops that route_mcmc_ops_to_cpu replaces, and the ops
# functions that look them up when called.
MCMC_OPS_GLOBALS = {
    "compute_relocation": ("relocate", "sample_add"),
    "quat_scale_to_covar_preci": ("inject_noise_to_position",),
}

Relocation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_routed = False


def route_mcmc_ops_to_cpu(relocation: Relocation) -> None:
    """Make `MCMCStrategy` work on CPU tensors (idempotent; CUDA calls unchanged).

    `gsplat.strategy.ops.compute_relocation(opacities, scales, ratios, binoms)` runs
    `relocation` on CPU tensors; `gsplat.strategy.ops.quat_scale_to_covar_preci` runs
    `quat_scale_to_covar_preci` above (gsplat's reference) on CPU tensors.
    """
    global _routed
    if _routed:
        return
    cuda_relocation = _strategy_ops.compute_relocation
    cuda_covar = _strategy_ops.quat_scale_to_covar_preci

    def compute_relocation(opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor,
                           binoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if opacities.is_cuda:
            return cuda_relocation(opacities, scales, ratios, binoms)
        return relocation(opacities, scales, ratios, binoms)

    def covar_preci(quats: torch.Tensor, scales: torch.Tensor, compute_covar: bool = True,
                    compute_preci: bool = True, triu: bool = False) -> Any:
        if quats.is_cuda:
            return cuda_covar(quats, scales, compute_covar=compute_covar, compute_preci=compute_preci, triu=triu)
        return quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)

    _strategy_ops.compute_relocation = compute_relocation
    _strategy_ops.quat_scale_to_covar_preci = covar_preci
    _routed = True


# -- DefaultStrategy's growth step (clone + split) --------------------------------------------


def mean_grad2d(state: dict[str, Any]) -> torch.Tensor:
    """Each Gaussian's mean image-plane gradient since the last refinement, as DefaultStrategy's
    growth compares it with `grow_grad2d` (its state's `grad2d` / `count`)."""
    return state["grad2d"] / state["count"].clamp_min(1)


@dataclass
class DefaultStrategyGrowth(DefaultStrategy):
    """gsplat's DefaultStrategy with its growth step as a hook (override `grow`, and call
    `default_grow` for gsplat's own clone + split, gsplat's private `_grow_gs`) and with the
    opacity reset that gsplat 1.5.3 skips (`opacity_reset`)."""

    if TYPE_CHECKING:  # gsplat ships no types; dataclass fields of DefaultStrategy
        grow_grad2d: float
        prune_opa: float
        reset_every: int
        refine_stop_iter: int

    # Clamp every opacity to at most 2 x prune_opa each `reset_every` steps before `refine_stop_iter`
    # (3DGS's schedule, which gsplat 1.5.3 documents but never runs: see the module docstring).
    opacity_reset: bool = False

    def step_post_backward(self, params: Any, optimizers: Any, state: dict[str, Any], step: int,
                           info: dict[str, Any], packed: bool = False) -> None:
        DefaultStrategy.step_post_backward(self, params, optimizers, state, step, info, packed=packed)
        if self.opacity_reset and 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            self.reset_opacities(params, optimizers, state)

    @torch.no_grad()
    def reset_opacities(self, params: Any, optimizers: Any, state: dict[str, Any]) -> None:
        """Clamp every opacity to at most 2 x `prune_opa` and zero its Adam moments (gsplat's `reset_opa`)."""
        _strategy_ops.reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def _grow_gs(self, params: Any, optimizers: Any, state: dict[str, Any], step: int) -> tuple[int, int]:
        return self.grow(params, optimizers, state, step)

    @torch.no_grad()
    def grow(self, params: Any, optimizers: Any, state: dict[str, Any], step: int) -> tuple[int, int]:
        """(cloned, split) Gaussians at refinement `step`; gsplat's growth unless overridden."""
        return self.default_grow(params, optimizers, state, step)

    @torch.no_grad()
    def default_grow(self, params: Any, optimizers: Any, state: dict[str, Any], step: int,
                     grad_threshold: float | None = None) -> tuple[int, int]:
        """gsplat's growth: clone the small and split the large Gaussians whose `mean_grad2d`
        exceeds `grad_threshold` (default `grow_grad2d`); (cloned, split)."""
        if grad_threshold is None:
            return DefaultStrategy._grow_gs(self, params, optimizers, state, step)
        saved = self.grow_grad2d
        self.grow_grad2d = grad_threshold
        try:
            return DefaultStrategy._grow_gs(self, params, optimizers, state, step)
        finally:
            self.grow_grad2d = saved
