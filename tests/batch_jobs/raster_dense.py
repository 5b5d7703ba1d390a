"""A naive dense rasterizer: every pixel against every Gaussian, plain PyTorch autograd.

It follows the same compositing rules as `raster_cpu` and gsplat (alpha clamp at 0.999,
skip below 1/255, a pixel stops once its transmittance would fall to 1e-4), so it is the test
oracle for our tiled rasterizer, and the baseline that `bench/splat.py` measures it against.
Memory is O(pixels x Gaussians) per chunk of pixels: only for small scenes.
"""

from __future__ import annotations

import torch

from batch_jobs.gaussians.raster_cpu import ALPHA_MAX, ALPHA_MIN, T_MIN


def rasterize_dense(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
                    depths: torch.Tensor, width: int, height: int, background: torch.Tensor | None = None,
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as `raster_cpu.rasterize`."""
    n_ch = colors.shape[1]
    if background is None:
        background = torch.zeros(n_ch, dtype=colors.dtype)
    order = torch.argsort(depths)
    m, cn, col, op = means2d[order], conics[order], colors[order], opacities[order]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=m.dtype) + 0.5, torch.arange(width, dtype=m.dtype) + 0.5,
                            indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    out_rgb, out_a = [], []
    for s in range(0, pix.shape[0], chunk):
        p = pix[s:s + chunk]
        d = m[None, :, :] - p[:, None, :]  # [P, N, 2]
        dx, dy = d[..., 0], d[..., 1]
        sigma = 0.5 * (cn[:, 0] * dx * dx + cn[:, 2] * dy * dy) + cn[:, 1] * dx * dy
        alpha = torch.clamp_max(op * torch.exp(-sigma), ALPHA_MAX)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        t_after = torch.cumprod(one_minus, dim=1)  # transmittance after each Gaussian
        t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
        used = (t_after > T_MIN).detach()  # a prefix: transmittance never grows
        w = alpha * t_before * used
        t_final = torch.exp((torch.log(one_minus) * used).sum(dim=1))
        out_rgb.append(w @ col + t_final[:, None] * background)
        out_a.append(1.0 - t_final)
    img = torch.cat(out_rgb).reshape(height, width, n_ch)
    alpha_img = torch.cat(out_a).reshape(height, width, 1)
    return img, alpha_img
