"""Image quality of a trained scene on views it was not trained on: PSNR and SSIM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from batch_jobs.gaussians import losses
from batch_jobs.gaussians.background import Background
from batch_jobs.gaussians.camera import View
from batch_jobs.gaussians.render import render


@torch.no_grad()
def evaluate(params: torch.nn.ParameterDict, views: Sequence[View], sh_degree: int,
             background: Background | None = None) -> dict[str, Any]:
    """Mean and per-view PSNR (dB) and SSIM of renders against the photos of `views`."""
    per_view = {}
    for v in views:
        out = render(params, v, sh_degree, background=background)
        img = out.rgb.clamp(0, 1)
        ref = v.photo().to(img.device)
        per_view[v.name] = {"psnr": round(losses.psnr(img, ref), 4),
                            "ssim": round(float(losses.ssim(img, ref)), 5)}
    if not per_view:
        return {"n_views": 0, "psnr": None, "ssim": None, "views": {}}
    return {
        "n_views": len(per_view),
        "psnr": round(float(np.mean([m["psnr"] for m in per_view.values()])), 4),
        "ssim": round(float(np.mean([m["ssim"] for m in per_view.values()])), 5),
        "views": per_view,
    }
