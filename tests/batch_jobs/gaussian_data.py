"""Gaussians in stored form for the export tests (what batch_jobs.gaussians.params.to_arrays gives)."""

from __future__ import annotations

import numpy as np

from batch_jobs.gaussians.params import SH_C0


def random_gaussians(n: int = 500, degree: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic ranges: positions over a few metres, small log scales, unnormalised quaternions
    (w x y z), opacity logits, SH DC from colours in 0..1, SH rest within +-0.5."""
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return {
        "means": (rng.normal(size=(n, 3)) * 3).astype(np.float32),
        "scales": rng.uniform(-6, 0, (n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "opacities": (rng.normal(size=n) * 3).astype(np.float32),
        "sh0": ((rng.uniform(0, 1, (n, 1, 3)) - 0.5) / SH_C0).astype(np.float32),
        "shN": rng.uniform(-0.5, 0.5, (n, k, 3)).astype(np.float32),
    }
