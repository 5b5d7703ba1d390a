"""Align a monocular depth prediction to the SfM points seen in the same image.

A relative Depth-Anything model predicts disparity up to an unknown scale and shift:
1/z ~= s * p + t. So the fit is in disparity space, where that model is exact; fitting depth
instead (z ~= s * p + t) would be the wrong model, because a shift in disparity is not a shift
in depth. Plain least squares in disparity space would, however, let near points dominate and
barely constrain far ones, so every residual is made relative:

    r_i = (s * p_i + t) * z_i - 1   ( = z_i / z_hat_i - 1, the relative depth error )

which is still linear in (s, t). The fit is robust: RANSAC over minimal pairs picks the inlier
set, then iteratively reweighted least squares with Huber weights refines (s, t) on all points.
Metric models (depth out) use the same machinery with r_i = (s * p_i + t) / z_i - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_POINTS = 8


@dataclass
class Alignment:
    space: str  # "disparity" (relative models) or "depth" (metric models)
    scale: float
    shift: float
    n_points: int
    n_inliers: int
    ok: bool
    reason: str = ""
    stats: dict[str, float | None] = field(default_factory=dict)  # relative depth errors at the SfM points

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "scale": self.scale, "shift": self.shift, "n_points": self.n_points,
                "n_inliers": self.n_inliers, "ok": self.ok, "reason": self.reason, **self.stats}


def _design(pred: np.ndarray, z: np.ndarray, space: str) -> np.ndarray:
    """Rows (a_i, b_i) with r_i = s a_i + t b_i - 1."""
    if space == "disparity":
        return np.stack([pred * z, z], axis=1)
    if space == "depth":
        return np.stack([pred / z, 1.0 / z], axis=1)
    raise ValueError(f"unknown alignment space {space!r}")


def _solve(A: np.ndarray, w: np.ndarray | None = None) -> np.ndarray | None:
    sw = np.ones(len(A)) if w is None else np.sqrt(w)
    sol, _, rank, _ = np.linalg.lstsq(A * sw[:, None], sw, rcond=None)
    return sol if rank == 2 and np.all(np.isfinite(sol)) else None


def predicted_depth(pred: np.ndarray, scale: float, shift: float, space: str) -> np.ndarray:
    """Depth (same units as the fit) from a prediction; NaN/inf/<= 0 where it has none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if space == "disparity":
            return 1.0 / (scale * pred + shift)
        return scale * pred + shift


def fit_scale_shift(pred: np.ndarray, z: np.ndarray, space: str = "disparity", *, threshold: float = 0.1,
                    iterations: int = 256, irls_steps: int = 10, seed: int = 0) -> Alignment:
    """Robust (scale, shift) mapping `pred` at the SfM points to their depths `z` (> 0)."""
    pred = np.asarray(pred, np.float64).ravel()
    z = np.asarray(z, np.float64).ravel()
    good = np.isfinite(pred) & np.isfinite(z) & (z > 0)
    pred, z = pred[good], z[good]
    n = len(z)
    if n < MIN_POINTS:
        return Alignment(space, 0.0, 0.0, n, 0, False, f"only {n} SfM points in view (need {MIN_POINTS})")
    # Condition the unknowns: a prediction scaled to ~1 keeps (s, t) of comparable size.
    p_scale = float(np.median(np.abs(pred))) or float(np.abs(pred).max()) or 1.0
    A = _design(pred / p_scale, z, space)

    rng = np.random.default_rng(seed)
    best_inliers, best_count = None, -1
    for _ in range(iterations):
        i, j = rng.choice(n, size=2, replace=False)
        sol = _solve(A[[i, j]])
        if sol is None or sol[0] <= 0:  # disparity and depth both grow with the prediction
            continue
        inl = np.abs(A @ sol - 1.0) < threshold
        c = int(inl.sum())
        if c > best_count:
            best_inliers, best_count = inl, c
    if best_inliers is None or best_count < max(2, MIN_POINTS // 2):
        return Alignment(space, 0.0, 0.0, n, max(best_count, 0), False,
                         "no consistent scale and shift (the prediction does not follow the SfM depths)")

    sol = _solve(A[best_inliers])
    if sol is None:
        return Alignment(space, 0.0, 0.0, n, best_count, False, "degenerate inlier set")
    for _ in range(irls_steps):  # Huber-weighted refinement on every point
        r = A @ sol - 1.0
        delta = max(1.4826 * float(np.median(np.abs(r))), 1e-3)
        w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-12))
        new = _solve(A, w)
        if new is None or new[0] <= 0:
            break
        converged = np.allclose(new, sol, rtol=1e-7, atol=1e-10)
        sol = new
        if converged:
            break

    scale, shift = float(sol[0]) / p_scale, float(sol[1])
    z_hat = predicted_depth(pred, scale, shift, space)
    rel = np.abs(z_hat - z) / z
    rel = np.where(np.isfinite(rel) & (z_hat > 0), rel, np.inf)
    inliers = int((rel < threshold).sum())
    finite = rel[np.isfinite(rel)]
    stats = {"median_rel_error": float(np.median(rel)),
             "mean_rel_error_inliers": float(rel[rel < threshold].mean()) if inliers else None,
             "p90_rel_error": float(np.percentile(rel, 90)),
             "max_rel_error": float(finite.max()) if finite.size else None,
             "inlier_fraction": inliers / n}
    stats = {k: (round(v, 6) if v is not None and np.isfinite(v) else None) for k, v in stats.items()}
    return Alignment(space, scale, shift, n, inliers, True, "", stats)


def aligned_depth_map(pred: np.ndarray, alignment: Alignment, max_depth: float) -> np.ndarray:
    """The depth map in SfM units, float32, 0 where invalid (no fit, behind, or beyond max_depth)."""
    if not alignment.ok:
        return np.zeros(pred.shape, np.float32)
    depth = predicted_depth(pred.astype(np.float64), alignment.scale, alignment.shift, alignment.space)
    valid = np.isfinite(depth) & (depth > 0) & (depth <= max_depth)
    return np.where(valid, depth, 0.0).astype(np.float32)
