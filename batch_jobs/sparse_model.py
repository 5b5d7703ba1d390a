"""The `sfm` stage's sparse model as numpy arrays: views (pinhole K, world->camera pose) and points.

Read from `sfm/sparse/0/{cameras,images,points3D}.bin` with pycolmap. The model is the
undistorted PINHOLE one (docs/contracts.md, "Stage outputs"), so K alone maps camera to
pixels; pixel centres are at +0.5 (COLMAP). Views are sorted by name, so "every 8th view"
means the same views to every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batch_jobs.errors import StageError

BAD_SPARSE_MODEL = "BAD_SPARSE_MODEL"
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class SparseView:
    name: str  # the image stem: `sfm/images/{name}.jpg`, `depth/{name}.npy`
    file: str  # the image name in the model (`{name}.jpg`)
    K: np.ndarray  # [3, 3] pixels
    R: np.ndarray  # [3, 3] world -> camera
    t: np.ndarray  # [3]
    width: int
    height: int
    xy: np.ndarray  # [n, 2] observed keypoints with a 3D point
    point_index: np.ndarray  # [n] rows of SparseModel.points for those keypoints

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    @property
    def viewmat(self) -> np.ndarray:
        """[4, 4] world -> camera."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m


@dataclass
class SparseModel:
    views: list[SparseView]
    points: np.ndarray  # [P, 3] float64
    colors: np.ndarray  # [P, 3] uint8
    errors: np.ndarray  # [P] reprojection error, pixels

    def observed(self, view: SparseView) -> tuple[np.ndarray, np.ndarray]:
        """(xy [n, 2] pixels, camera-space points [n, 3]) of the points seen in `view`."""
        xyz = self.points[view.point_index]
        return view.xy, xyz @ view.R.T + view.t

    def scene_extent(self) -> tuple[np.ndarray, float]:
        """Centre and radius of the camera centres (gsplat's `scene_scale` heuristic), times 1.1."""
        centers = np.stack([v.center for v in self.views])
        mid = centers.mean(axis=0)
        radius = float(np.linalg.norm(centers - mid, axis=1).max()) * 1.1
        if radius <= 0:  # a single view: use the points' spread instead
            radius = float(np.linalg.norm(self.points - self.points.mean(axis=0), axis=1).mean() or 1.0)
        return mid, radius


def read_sparse_model(model_dir: Path) -> SparseModel:
    """Load a sparse model; a missing, empty or distorted model is a StageError (bad input)."""
    import pycolmap

    model_dir = Path(model_dir)
    if not (model_dir / "images.bin").exists() and not (model_dir / "images.txt").exists():
        raise StageError(BAD_SPARSE_MODEL, f"no sparse model in {model_dir}")
    rec = pycolmap.Reconstruction(str(model_dir))
    point_ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
    if point_ids.size == 0:
        raise StageError(BAD_SPARSE_MODEL, "the sparse model has no 3D points")
    row_of = {int(pid): i for i, pid in enumerate(point_ids)}
    pts = rec.points3D
    points = np.array([pts[int(p)].xyz for p in point_ids], dtype=np.float64)
    colors = np.array([pts[int(p)].color for p in point_ids], dtype=np.uint8)
    errors = np.array([pts[int(p)].error for p in point_ids], dtype=np.float64)

    views = []
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        cam = image.camera
        if cam is None:
            raise StageError(BAD_SPARSE_MODEL, f"image {image.name} has no camera")
        model = str(cam.model).rsplit(".", 1)[-1]
        if model not in PINHOLE_MODELS:
            raise StageError(BAD_SPARSE_MODEL, f"image {image.name} uses camera model {model}; "
                             f"expected an undistorted {' or '.join(PINHOLE_MODELS)} model")
        pose = image.cam_from_world().matrix()
        obs = [(p.xy, row_of[int(p.point3D_id)]) for p in image.points2D
               if p.has_point3D() and int(p.point3D_id) in row_of]
        xy = np.array([o[0] for o in obs], dtype=np.float64).reshape(-1, 2)
        idx = np.array([o[1] for o in obs], dtype=np.int64)
        views.append(SparseView(name=Path(image.name).stem, file=image.name,
                                K=np.asarray(cam.calibration_matrix(), dtype=np.float64),
                                R=np.asarray(pose[:, :3], dtype=np.float64), t=np.asarray(pose[:, 3], dtype=np.float64),
                                width=int(cam.width), height=int(cam.height), xy=xy, point_index=idx))
    if not views:
        raise StageError(BAD_SPARSE_MODEL, "the sparse model has no registered images")
    views.sort(key=lambda v: v.name)
    return SparseModel(views=views, points=points, colors=colors, errors=errors)


def held_out(index: int, every: int = 8) -> bool:
    """Every `every`-th view (0, 8, 16, ...) is held out for evaluation (the 3DGS convention)."""
    return every > 0 and index % every == 0
