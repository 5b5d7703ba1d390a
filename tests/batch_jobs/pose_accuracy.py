"""Camera-pose accuracy against ground truth: similarity alignment (Umeyama) and pose errors.

Ground truth is a `cameras.json` in the layout of `../shared/datasets/README.md` (world->camera
`R`, `t`, `center`, COLMAP axes). A reconstruction is known only up to a similarity, so its
camera centres are aligned to the true ones first; then the errors are:

- camera-centre error: |s R c_est + t - c_true| per camera, in the truth's units (metres);
- rotation error: the angle of R_true R_est_aligned^T, in degrees, where the estimated
  world->camera rotation is expressed in the true world frame (R_est @ R_align^T).

Used by the tests and bench/sfm_accuracy.py (not part of the job image); numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Pose:
    """World->camera rotation `R` (3x3) and translation `t` (3,): x_cam = R @ x_world + t."""

    R: np.ndarray
    t: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass(frozen=True)
class Similarity:
    """x' = s * R @ x + t."""

    s: float
    R: np.ndarray
    t: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.s * (np.asarray(x) @ self.R.T) + self.t


def _summary(statistic: Callable[[np.ndarray], Any], errors: np.ndarray) -> float:
    """`statistic` of the errors; NaN when there are none."""
    return float(statistic(errors)) if errors.size else float("nan")


@dataclass
class PoseErrors:
    """Per-camera errors after the alignment, and their summaries."""

    names: list[str]
    center_errors: np.ndarray  # metres, one per name
    rotation_errors_deg: np.ndarray
    missing: list[str] = field(default_factory=list)  # true cameras with no estimate
    alignment: Similarity | None = None

    # Their summaries (NaN where no camera matched).
    center_rmse: float = field(init=False)
    center_median: float = field(init=False)
    center_max: float = field(init=False)
    rotation_mean_deg: float = field(init=False)
    rotation_max_deg: float = field(init=False)

    def __post_init__(self) -> None:
        c, r = self.center_errors, self.rotation_errors_deg
        self.center_rmse = _summary(lambda e: np.sqrt(np.mean(e**2)), c)
        self.center_median = _summary(np.median, c)
        self.center_max = _summary(np.max, c)
        self.rotation_mean_deg = _summary(np.mean, r)
        self.rotation_max_deg = _summary(np.max, r)

    def summary(self) -> dict[str, Any]:
        return {"matched": len(self.names), "missing": len(self.missing),
                "center_rmse": self.center_rmse, "center_median": self.center_median,
                "center_max": self.center_max, "rotation_mean_deg": self.rotation_mean_deg,
                "rotation_max_deg": self.rotation_max_deg}


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Similarity:
    """The least-squares similarity taking points `src` (Nx3) onto `dst` (Nx3) (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError("umeyama needs two Nx3 arrays of the same shape, N >= 3")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0  # a reflection is not a rotation
    R = U @ S @ Vt
    var_s = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_d - s * R @ mu_s
    return Similarity(s, R, t)


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """The angle of the relative rotation Ra Rb^T, in degrees."""
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def pose_errors(estimated: dict[str, Pose], truth: dict[str, Pose]) -> PoseErrors:
    """Align the estimated centres to the true ones (cameras present in both), then measure."""
    names = sorted(set(estimated) & set(truth))
    missing = sorted(set(truth) - set(estimated))
    if len(names) < 3:
        return PoseErrors(names, np.full(len(names), np.nan), np.full(len(names), np.nan), missing)
    est_c = np.stack([estimated[n].center for n in names])
    true_c = np.stack([truth[n].center for n in names])
    sim = umeyama(est_c, true_c)
    center_err = np.linalg.norm(sim.apply(est_c) - true_c, axis=1)
    # World change x_est = (R_a^T (x_true - t_a)) / s, so R_cam_in_true_world = R_est @ R_a^T.
    rot_err = np.array([rotation_angle_deg(truth[n].R, estimated[n].R @ sim.R.T) for n in names])
    return PoseErrors(names, center_err, rot_err, missing, sim)


def rig_radius(poses: dict[str, Pose]) -> float:
    """The mean distance of the camera centres from their centroid: the scale of a capture whose
    poses have no units (reference poses), against which a centre error is judged."""
    c = np.stack([p.center for p in poses.values()])
    return float(np.linalg.norm(c - c.mean(axis=0), axis=1).mean())


def _stem(name: str) -> str:
    return Path(name).stem


def load_truth(cameras_json: Path | str) -> dict[str, Pose]:
    """Ground-truth poses from a `cameras.json`, keyed by image stem (`0000.jpg` -> `0000`)."""
    doc = json.loads(Path(cameras_json).read_text())
    return {_stem(name): Pose(np.asarray(c["R"], np.float64), np.asarray(c["t"], np.float64))
            for name, c in doc["cameras"].items()}


def poses_from_reconstruction(rec: Any) -> dict[str, Pose]:
    """World->camera poses of a `pycolmap.Reconstruction`'s registered images, keyed by stem."""
    out: dict[str, Pose] = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam_from_world = image.cam_from_world()
        m = np.asarray(cam_from_world.matrix(), np.float64)
        out[_stem(image.name)] = Pose(m[:, :3], m[:, 3])
    return out


def poses_from_model_dir(model_dir: Path | str) -> dict[str, Pose]:
    """Poses of the COLMAP model in `model_dir` (`cameras.bin`, `images.bin`, `points3D.bin`)."""
    import pycolmap

    return poses_from_reconstruction(pycolmap.Reconstruction(str(model_dir)))
