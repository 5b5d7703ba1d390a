"""Render Gaussians into one view: `gsplat.rasterization` on CUDA, our tiled rasterizer on CPU.

Both paths return the same things: RGB [H, W, 3], expected depth [H, W] (when asked; the
alpha-weighted camera z divided by alpha, gsplat's "ED"), alpha [H, W, 1], and the `info` dict
the densification strategies read (`means2d` [1, N, 2] whose gradient they accumulate,
`radii` [1, N, 2], `width`, `height`, `n_cameras`, `gaussian_ids`). The background
(`background.Background`, a colour per viewing direction) is composited over the render by alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from batch_jobs.gaussians import raster_cpu
from batch_jobs.gaussians.background import Background
from batch_jobs.gaussians.camera import View
from batch_jobs.gaussians.params import activated
from batch_jobs.gaussians.projection import EPS2D, NEAR_PLANE, project


@dataclass
class RenderResult:
    rgb: torch.Tensor  # [H, W, 3]
    alpha: torch.Tensor  # [H, W, 1]
    depth: torch.Tensor | None  # [H, W] expected depth (0 where alpha is 0)
    info: dict[str, Any]


def render(params: torch.nn.ParameterDict, view: View, sh_degree: int, *, with_depth: bool = False,
           background: Background | None = None, device: str | None = None) -> RenderResult:
    """Render `view` over `background` (None: black); `device` defaults to where the parameters live."""
    device = device or params["means"].device.type
    out = (_render_gsplat if device == "cuda" else _render_cpu)(params, view, sh_degree, with_depth)
    if background is not None:
        out.rgb = background.behind(out.rgb, out.alpha, view)
    return out


def _expected_depth(acc: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return torch.where(alpha[..., 0] > 1e-6, acc / alpha[..., 0].clamp_min(1e-6), torch.zeros_like(acc))


def _render_cpu(params: torch.nn.ParameterDict, view: View, sh_degree: int, with_depth: bool) -> RenderResult:
    p = activated(params)
    proj = project(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"], sh_degree,
                   view.viewmat, view.K, view.width, view.height)
    colors = proj.colors
    if with_depth:
        colors = torch.cat([colors, proj.depths[:, None]], dim=1)
    image, alpha = raster_cpu.rasterize(proj.means2d[0, proj.visible], proj.conics, colors, proj.opacities,
                                        proj.depths, view.width, view.height)
    info = {"means2d": proj.means2d, "radii": proj.radii, "width": view.width, "height": view.height,
            "n_cameras": 1, "gaussian_ids": None, "n_visible": int(proj.visible.numel())}
    depth = _expected_depth(image[..., 3], alpha) if with_depth else None
    return RenderResult(rgb=image[..., :3], alpha=alpha, depth=depth, info=info)


def _render_gsplat(params: torch.nn.ParameterDict, view: View, sh_degree: int, with_depth: bool) -> RenderResult:
    """CUDA: gsplat.rasterization (gsplat 1.5.3 API), unpacked so `radii` is [1, N, 2]."""
    from gsplat import rasterization

    p = activated(params)
    dev = p["means"].device
    renders, alphas, info = rasterization(
        means=p["means"], quats=p["quats"], scales=p["scales"], opacities=p["opacities"], colors=p["sh"],
        viewmats=view.viewmat.to(dev)[None], Ks=view.K.to(dev)[None], width=view.width, height=view.height,
        near_plane=NEAR_PLANE, eps2d=EPS2D, sh_degree=sh_degree, packed=False,
        render_mode="RGB+ED" if with_depth else "RGB", rasterize_mode="classic")
    # gsplat's "ED" channel is already the expected depth (accumulated z / alpha).
    depth = renders[0, ..., 3] if with_depth else None
    info["n_visible"] = int((info["radii"] > 0).all(dim=-1).sum().item())
    return RenderResult(rgb=renders[0, ..., :3], alpha=alphas[0], depth=depth, info=info)
