"""Our CPU rasterizer against gsplat's CUDA rasterizer on the same inputs: images and gradients.

Two comparisons, each measured as the largest difference relative to the largest magnitude of
the gsplat tensor (so 1e-4 means "agrees to 1e-4 of that tensor's scale"):

- `rasterizer_parity`: the same projected 2D Gaussians (means, conics, colours, opacities,
  depths, background) through `raster_cpu.rasterize` on CPU and through gsplat's `isect_tiles`,
  `isect_offset_encode` and `rasterize_to_pixels` on CUDA, then the same random output gradient
  back through both. gsplat is handed tile radii that cover each Gaussian's alpha >= 1/255
  ellipse (`cover_radii`), which is the footprint our rasterizer uses, so both composite the
  same Gaussians in every pixel and only the arithmetic differs (float32 on both sides).
- `render_both` / `render_parity`: the whole render (projection, spherical harmonics,
  rasterization, expected depth) through `batch_jobs.gaussians.render` on CPU and on CUDA
  (gsplat's fused projection there, its PyTorch reference projection here).

Used by tests/batch_jobs/test_raster_cpu.py (the CUDA tests, skipped without a GPU) and by
bench/gpu/gpu_check.py, which records the figures on a GPU machine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from batch_jobs.gaussians import raster_cpu

DIFF_KEYS = ("means2d", "conics", "colors", "opacities", "background")
TILE = 16


def random_2d(n: int, width: int, height: int, seed: int = 0, scale: float = 3.0,
              channels: int = 3) -> dict[str, torch.Tensor]:
    """Random projected Gaussians, some partly outside the image, with a background colour."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.2, height * 1.2]) - torch.tensor(
        [width * 0.1, height * 0.1])
    L = torch.randn(n, 2, 2, generator=g) * scale
    cov = L @ L.transpose(1, 2) + 0.3 * torch.eye(2)
    inv = torch.linalg.inv(cov)
    return {
        "means2d": means,
        "conics": torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], dim=-1),
        "colors": torch.rand(n, channels, generator=g),
        "opacities": torch.rand(n, generator=g) * 0.95 + 0.04,
        "depths": torch.rand(n, generator=g) * 10 + 0.5,
        "background": torch.rand(channels, generator=g),
    }


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (an all-zero reference counts as scale 1e-12)."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    return float((ours - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)


def cover_radii(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """[N, 2] int32 half-widths (pixels) of the box around each Gaussian's alpha >= 1/255 ellipse,
    rounded up plus one pixel; 0 for a Gaussian that can never reach 1/255 (gsplat skips it)."""
    a, b, c = conics[:, 0].double(), conics[:, 1].double(), conics[:, 2].double()
    o = opacities.double()
    det = a * c - b * b
    k2 = 2.0 * torch.log(torch.clamp_min(255.0 * o, 1e-30))
    ok = (o * 255.0 > 1.0) & (det > 0) & torch.isfinite(means2d.double()).all(dim=-1)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    hx = torch.sqrt(torch.clamp_min(k2 * c / safe_det, 0.0))
    hy = torch.sqrt(torch.clamp_min(k2 * a / safe_det, 0.0))
    radii = torch.stack([torch.ceil(hx) + 1, torch.ceil(hy) + 1], dim=-1)
    radii = torch.where(ok[:, None] & torch.isfinite(radii), radii, torch.zeros_like(radii))
    return radii.to(torch.int32)


def gsplat_rasterize(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
                     depths: torch.Tensor, width: int, height: int,
                     background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gsplat's CUDA tile rasterizer on one image: ([H, W, C], [H, W, 1]); inputs on the GPU."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    radii = cover_radii(means2d.detach(), conics.detach(), opacities.detach())[None]
    _, isect_ids, flatten_ids = isect_tiles(means2d.detach()[None].contiguous(), radii.contiguous(),
                                            depths.detach()[None].contiguous(), TILE, tiles_x, tiles_y)
    offsets = isect_offset_encode(isect_ids, 1, tiles_x, tiles_y)
    img, alpha = rasterize_to_pixels(means2d[None], conics[None], colors[None], opacities[None], width, height,
                                     TILE, offsets, flatten_ids, backgrounds=background[None])
    return img[0], alpha[0]


def rasterizer_parity(inputs: dict[str, torch.Tensor], width: int, height: int,
                      seed: int = 123) -> dict[str, float]:
    """Relative errors of our CPU rasterizer against gsplat's (CUDA) on `inputs`: the image, the
    alpha and the gradient of each input of DIFF_KEYS, for the same random output gradient."""
    g = torch.Generator().manual_seed(seed)
    ch = inputs["colors"].shape[1]
    w_img = torch.randn(height, width, ch, generator=g)
    w_alpha = torch.randn(height, width, 1, generator=g)
    results = {}
    for dev in ("cpu", "cuda"):
        leaves = {k: inputs[k].detach().float().to(dev).clone().requires_grad_(True) for k in DIFF_KEYS}
        depths = inputs["depths"].detach().float().to(dev)
        args = (leaves["means2d"], leaves["conics"], leaves["colors"], leaves["opacities"], depths, width, height)
        if dev == "cpu":
            img, alpha = raster_cpu.rasterize(*args, leaves["background"], tile=TILE)
        else:
            img, alpha = gsplat_rasterize(*args, leaves["background"])
        ((img * w_img.to(dev)).sum() + (alpha * w_alpha.to(dev)).sum()).backward()
        results[dev] = (img.detach().cpu(), alpha.detach().cpu(), {k: v.grad.detach().cpu() for k, v in leaves.items()})
    (img_c, alpha_c, grads_c), (img_g, alpha_g, grads_g) = results["cpu"], results["cuda"]
    errors = {"image": rel_err(img_c, img_g), "alpha": rel_err(alpha_c, alpha_g)}
    errors.update({f"grad_{k}": rel_err(grads_c[k], grads_g[k]) for k in DIFF_KEYS})
    return errors


def render_both(seed: int = 0) -> tuple[dict[str, tuple[torch.Tensor, ...]], dict[str, dict[str, torch.Tensor]]]:
    """The synthetic scene's Gaussians rendered (RGB, alpha, expected depth) through
    `batch_jobs.gaussians.render` on CPU and on CUDA, and the parameters' gradients for the
    same random image gradient: ({device: (rgb, alpha, depth)}, {device: {param: grad}})."""
    from batch_jobs.gaussians.background import Background
    from batch_jobs.gaussians.camera import View
    from batch_jobs.gaussians.params import init_params
    from batch_jobs.gaussians.render import render
    from emulator.synthetic_scene import SyntheticScene, look_at

    scene = SyntheticScene(7)
    rng = np.random.default_rng(seed)
    pts = scene.sample_surface(4000, seed=1)
    params = init_params(pts, rng.integers(0, 255, (len(pts), 3)), sh_degree=2, init_opacity=0.6)
    with torch.no_grad():  # anisotropic, so rotations matter; some view dependence
        params["shN"].normal_(0, 0.1)
        params["scales"].add_(torch.randn(params["scales"].shape, generator=torch.Generator().manual_seed(1)) * 0.4)
    R, t = look_at(np.array([3.0, -2.0, 1.5]), scene.target)
    vm = torch.eye(4)
    vm[:3, :3] = torch.tensor(R, dtype=torch.float32)
    vm[:3, 3] = torch.tensor(t, dtype=torch.float32)
    view = View("p", torch.tensor([[200.0, 0, 120], [0, 200, 90], [0, 0, 1]]), vm, 240, 180)
    bg = Background.uniform(torch.tensor([0.1, 0.2, 0.3]))
    gw = torch.randn(180, 240, 3, generator=torch.Generator().manual_seed(2))
    outs: dict[str, tuple[torch.Tensor, ...]] = {}
    grads: dict[str, dict[str, torch.Tensor]] = {}
    for dev in ("cpu", "cuda"):
        p = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone().to(dev)) for k, v in params.items()})
        out = render(p, view, 2, with_depth=True, background=bg.to(dev), device=dev)
        ((out.rgb * gw.to(dev)).sum() + out.alpha.sum()).backward()
        outs[dev] = (out.rgb.detach().cpu(), out.alpha.detach().cpu(), out.depth.detach().cpu())
        grads[dev] = {k: v.grad.detach().cpu() for k, v in p.items()}
    return outs, grads


def render_parity(seed: int = 0) -> dict[str, float]:
    """`render_both` as relative errors (CPU against CUDA): rgb, alpha, depth, each parameter's gradient."""
    outs, grads = render_both(seed)
    errors = {name: rel_err(a, b) for name, a, b in zip(("rgb", "alpha", "depth"), outs["cpu"], outs["cuda"],
                                                         strict=True)}
    errors.update({f"grad_{k}": rel_err(grads["cpu"][k], grads["cuda"][k]) for k in grads["cuda"]})
    return errors
