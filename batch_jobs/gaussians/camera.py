"""Views to train on or render: intrinsics and pose at a working resolution, plus the photo.

Images are downscaled so their long side is at most `max_long_side` (never upscaled); K scales
with them (COLMAP pixel centres at +0.5, so the scaling is exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from batch_jobs.sparse_model import SparseModel, SparseView


@dataclass
class View:
    name: str
    K: torch.Tensor  # [3, 3] float32, pixels of this view's resolution
    viewmat: torch.Tensor  # [4, 4] float32, world -> camera
    width: int
    height: int
    image: torch.Tensor | None = None  # [H, W, 3] float32 in 0..1
    depth: torch.Tensor | None = None  # [H, W] float32 SfM units, 0 = no depth

    def photo(self) -> torch.Tensor:
        """`image`, which every view trained or evaluated on has (load_views with_images)."""
        if self.image is None:
            raise ValueError(f"view {self.name} has no image loaded")
        return self.image

    @property
    def center(self) -> torch.Tensor:
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t


def working_size(width: int, height: int, max_long_side: int) -> tuple[int, int, float]:
    """(w, h, factor) with the long side at most `max_long_side`."""
    factor = min(1.0, max_long_side / max(width, height)) if max_long_side > 0 else 1.0
    return max(1, round(width * factor)), max(1, round(height * factor)), factor


def view_from_sparse(sv: SparseView, max_long_side: int) -> View:
    w, h, _ = working_size(sv.width, sv.height, max_long_side)
    K = sv.K.copy()
    K[0] *= w / sv.width
    K[1] *= h / sv.height
    return View(sv.name, torch.tensor(K, dtype=torch.float32), torch.tensor(sv.viewmat, dtype=torch.float32), w, h)


def load_image(path: Path, width: int, height: int) -> torch.Tensor:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read {path}")
    if img.shape[1] != width or img.shape[0] != height:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)


def _load_depth(path: Path, width: int, height: int) -> torch.Tensor | None:
    import cv2

    if not path.exists():
        return None
    d = np.load(path).astype(np.float32)
    if d.shape != (height, width):
        # Nearest keeps invalid (0) pixels from bleeding into valid ones.
        d = cv2.resize(d, (width, height), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(d)


def load_views(model: SparseModel, images_dir: Path, max_long_side: int, depth_dir: Path | None = None,
               with_images: bool = True) -> list[View]:
    """Every registered view of `model`, in name order, with its photo (and aligned depth map)."""
    views = []
    for sv in model.views:
        v = view_from_sparse(sv, max_long_side)
        if with_images:
            v.image = load_image(images_dir / sv.file, v.width, v.height)
        if depth_dir is not None:
            v.depth = _load_depth(depth_dir / f"{sv.name}.npy", v.width, v.height)
        views.append(v)
    return views
