"""What a view shows where no Gaussian covers it: a colour per viewing direction, learned.

A coarse map of the sphere of directions (latitude x longitude in the SfM frame, bilinear):
each pixel's ray reads the colour of its direction. It starts as the photos' mean colour
everywhere; training moves the cells whose directions training views see past the Gaussians
(in the end mostly the sky; cells behind opaque Gaussians get only a vanishing gradient), and
directions outside every training view keep the mean exactly: the least-squares guess for
what a view beyond the training cameras sees uncovered (near walls, the ground at the ends
of a walk). Measured at `preview`
(docs/benchmarks.md, "Splat against OpenSplat", 2026-12-08): one colour learned for all
directions became the sky's, and lund's first held-out view showed sky where its near walls are;
a smooth function of the direction (spherical harmonics of degree 2) carried the sky there too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from batch_jobs.gaussians.camera import View

LAT_CELLS, LON_CELLS = 16, 32  # about 11 degrees a cell


@dataclass
class Background:
    texture: torch.Tensor  # [3, LAT_CELLS, LON_CELLS] colours over latitude (rows) and longitude

    @classmethod
    def uniform(cls, rgb: torch.Tensor) -> Background:
        """The colour `rgb` [3] in every direction."""
        return cls(rgb.float()[:, None, None].repeat(1, LAT_CELLS, LON_CELLS).contiguous())

    @classmethod
    def mean_of(cls, views: Sequence[View]) -> Background:
        """The photos' mean colour in every direction: where training starts."""
        return cls.uniform(torch.stack([v.photo().reshape(-1, 3).mean(dim=0) for v in views]).mean(dim=0))

    def to(self, device: torch.device | str) -> Background:
        return Background(self.texture.to(device))

    def learnable(self) -> Background:
        """A copy whose texture an optimiser can train."""
        return Background(self.texture.detach().clone().requires_grad_(True))

    def image(self, view: View) -> torch.Tensor:
        """[H, W, 3]: the colour behind each pixel of `view`."""
        dev = self.texture.device
        v, u = torch.meshgrid(torch.arange(view.height, device=dev) + 0.5,
                              torch.arange(view.width, device=dev) + 0.5, indexing="ij")
        pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)
        rays = pixels @ torch.linalg.inv(view.K.to(dev)).T @ view.viewmat[:3, :3].to(dev)  # R^T x: world
        rays = rays / rays.norm(dim=-1, keepdim=True)
        lon = torch.atan2(rays[..., 0], rays[..., 2]) / math.pi  # -1..1
        lat = torch.asin(rays[..., 1].clamp(-1.0, 1.0)) / (math.pi / 2)  # -1..1
        # Longitude wraps around: one cell of the other side on each edge, the coordinates rescaled to match.
        wrapped = torch.cat([self.texture[..., -1:], self.texture, self.texture[..., :1]], dim=-1)
        grid = torch.stack([lon * LON_CELLS / (LON_CELLS + 2), lat], dim=-1)[None]
        out = F.grid_sample(wrapped[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0].permute(1, 2, 0).clamp(0.0, 1.0)

    def behind(self, rgb: torch.Tensor, alpha: torch.Tensor, view: View) -> torch.Tensor:
        """A render over a zero background ([H, W, 3], alpha [H, W, 1]) composited over this one."""
        return rgb + (1.0 - alpha) * self.image(view)

    def to_json(self) -> dict[str, Any]:
        return {"lat_cells": LAT_CELLS, "lon_cells": LON_CELLS, "texture": self.texture.detach().cpu().tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Background:
        texture = torch.tensor(data["texture"], dtype=torch.float32)
        if texture.shape != (3, LAT_CELLS, LON_CELLS):
            raise ValueError(f"a background of {tuple(texture.shape)} cells, not {(3, LAT_CELLS, LON_CELLS)}")
        return cls(texture)
