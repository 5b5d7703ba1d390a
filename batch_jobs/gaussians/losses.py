"""Training losses and image metrics: L1, SSIM (11x11 Gaussian window, separable), PSNR, depth."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


_KERNEL = _gaussian_kernel()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W], 'valid' borders (as the 3DGS SSIM does with padding 0)."""
    c = x.shape[1]
    k = _KERNEL.to(x.device, x.dtype)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two [H, W, C] images in 0..1 (valid region of the 11x11 window)."""
    x = img.permute(2, 0, 1)[None]
    y = ref.permute(2, 0, 1)[None]
    c = x.shape[1]
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, xx, yy, xy = torch.split(stats, c, dim=1)
    sxx = xx - mu_x * mu_x
    syy = yy - mu_y * mu_y
    sxy = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sxy + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sxx + syy + SSIM_C2)
    return (num / den).mean()


def l1(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (img - ref).abs().mean()


def psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((img.clamp(0, 1) - ref) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def photometric(img: torch.Tensor, ref: torch.Tensor, ssim_lambda: float = 0.2) -> torch.Tensor:
    """The 3DGS loss: (1 - lambda) L1 + lambda (1 - SSIM)."""
    return (1 - ssim_lambda) * l1(img, ref) + ssim_lambda * (1 - ssim(img, ref))


def depth_loss(pred: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 of log depth where the target has depth and the render is mostly opaque.

    Log depth makes it a relative error: a monocular map aligned to SfM is about equally good
    (in %) near and far.
    """
    valid = (target > 0) & (alpha[..., 0] > 0.5) & (pred > 0)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    return (torch.log(pred[valid].clamp_min(1e-6)) - torch.log(target[valid])).abs().mean()
