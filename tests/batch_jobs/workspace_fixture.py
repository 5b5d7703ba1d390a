"""A workspace whose `frames` and `sfm` outputs come from the synthetic scene's ground truth.

The inputs of the depth, splat and mesh stages are fixed by docs/contracts.md, "Stage outputs":
`frames/images/*.jpg`, `sfm/images/*.jpg` (undistorted), `sfm/sparse/0/*.bin` (a PINHOLE
model, the same image names), `sfm/points.ply`, and each stage's `_SUCCESS.json`. This module
writes exactly that from `emulator.synthetic_scene`: images rendered with `SyntheticScene`, a
`pycolmap.Reconstruction` built with the true cameras and poses, and 3D points sampled on the
true surface, kept where at least two cameras see them (checked against the rendered depth),
with their colours and their 2D observations. It is an honest input for the later stages,
with known geometry (metres) for measuring them.

Use it from tests in this folder (`from workspace_fixture import gt_workspace`), or build one
anywhere with `build_gt_workspace(path)` / `cached_gt_workspace()` (the local demo and the
end-to-end tests may want it: `python -m pytest` puts the repo root on sys.path, so
`tests.batch_jobs.workspace_fixture` imports there too).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = 1  # bump when the written workspace changes


@dataclass(frozen=True)
class GTSpec:
    """What to render: `n_frames` views picked evenly from a `video_frames` orbit."""

    n_frames: int = 40
    video_frames: int = 90
    width: int = 480
    height: int = 360
    n_points: int = 6000
    seed: int = 7

    @property
    def key(self) -> str:
        return (f"gt-ws-{self.n_frames}of{self.video_frames}-{self.width}x{self.height}-"
                f"p{self.n_points}-s{self.seed}-v{VERSION}")


@dataclass
class GTWorkspace:
    workspace: Path  # the stage workspace: request.json, frames/, sfm/
    gt_dir: Path  # ground truth: depth/{name}.npy (metres along z, 0 = sky), surface.npy
    spec: GTSpec

    @property
    def names(self) -> list[str]:
        return sorted(p.stem for p in (self.workspace / "sfm" / "images").glob("*.jpg"))

    def true_depth(self, name: str) -> np.ndarray:
        return np.load(self.gt_dir / "depth" / f"{name}.npy")

    def surface(self) -> np.ndarray:
        return np.load(self.gt_dir / "surface.npy")

    def cameras(self) -> dict:
        return json.loads((self.gt_dir / "cameras.json").read_text())["cameras"]


def build_gt_workspace(root: Path, spec: GTSpec = GTSpec()) -> GTWorkspace:
    """Write `root/ws` (the workspace) and `root/gt` (ground truth)."""
    import cv2
    import pycolmap

    from emulator.synthetic_scene import SyntheticScene, write_cameras_json

    ws, gt = root / "ws", root / "gt"
    for d in (ws / "frames" / "images", ws / "sfm" / "images", ws / "sfm" / "sparse" / "0", gt / "depth"):
        d.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(spec.seed)
    orbit = scene.orbit_cameras(spec.video_frames, spec.width, spec.height)
    picks = np.unique(np.round(np.linspace(0, spec.video_frames - 1, spec.n_frames)).astype(int))
    cams = [orbit[i] for i in picks]  # named by source frame index, as the frames stage names them

    images, depths = [], []
    for cam in cams:
        rgb, depth = scene.render(cam)
        depth = np.where(np.isfinite(depth), depth, 0).astype(np.float32)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for sub in ("frames", "sfm"):
            cv2.imwrite(str(ws / sub / "images" / f"{cam.name}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.save(gt / "depth" / f"{cam.name}.npy", depth)
        images.append(rgb)
        depths.append(depth)
    write_cameras_json(gt / "cameras.json", cams)
    np.save(gt / "surface.npy", scene.sample_surface())

    # Candidate points on the true surface; a point is observed where it is in front of the
    # rendered surface's depth (not occluded), inside the image.
    rng = np.random.default_rng(spec.seed)
    cand = scene.sample_surface(spec.n_points * 8, seed=spec.seed + 1).astype(np.float64)
    obs: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(len(cand))]
    for ci, (cam, depth) in enumerate(zip(cams, depths, strict=True)):
        pc = cand @ cam.R.T + cam.t
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (pc @ cam.K.T)[:, :2] / z[:, None]
        inside = (z > 0.05) & (uv[:, 0] >= 0.5) & (uv[:, 0] < cam.width - 0.5) & (uv[:, 1] >= 0.5) \
            & (uv[:, 1] < cam.height - 0.5)
        idx = np.flatnonzero(inside)
        px = np.floor(uv[idx]).astype(int)
        zd = depth[px[:, 1], px[:, 0]]
        seen = idx[np.abs(zd - z[idx]) < 0.01 * z[idx] + 0.01]
        for i in seen:
            obs[i].append((ci, uv[i]))
    keep = [i for i in range(len(cand)) if len(obs[i]) >= 2]
    keep = sorted(rng.choice(keep, size=min(spec.n_points, len(keep)), replace=False).tolist())

    rec = pycolmap.Reconstruction()
    K = cams[0].K
    camera = pycolmap.Camera(model="PINHOLE", width=spec.width, height=spec.height,
                             params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]], camera_id=1)
    rec.add_camera_with_trivial_rig(camera)
    kps: list[list[np.ndarray]] = [[] for _ in cams]
    tracks: list[list[tuple[int, int]]] = []
    for i in keep:
        track = []
        for ci, uv in obs[i]:
            track.append((ci, len(kps[ci])))
            kps[ci].append(uv)
        tracks.append(track)
    for ci, cam in enumerate(cams):
        image = pycolmap.Image(name=f"{cam.name}.jpg", keypoints=np.asarray(kps[ci], np.float64).reshape(-1, 2),
                               camera_id=1, image_id=ci + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.hstack([cam.R, cam.t[:, None]])))
    for i, track in zip(keep, tracks, strict=True):
        cols = []
        for ci, uv in obs[i]:
            x, y = np.floor(uv).astype(int)
            cols.append(images[ci][y, x])
        color = np.clip(np.mean(cols, axis=0).round(), 0, 255).astype(np.uint8)
        elements = [pycolmap.TrackElement(ci + 1, k) for ci, k in track]
        rec.add_point3D(cand[i], pycolmap.Track(elements), color)
    rec.write_binary(str(ws / "sfm" / "sparse" / "0"))
    rec.export_PLY(str(ws / "sfm" / "points.ply"))

    names = [c.name for c in cams]
    meta = {"synthetic_ground_truth": True, "spec": spec.__dict__, "images": names,
            "points3D": len(keep)}
    (ws / "frames" / "report.json").write_text(json.dumps({"kept": names, "rejected": []}, indent=1))
    (ws / "sfm" / "report.json").write_text(json.dumps({"registered": len(names), **meta}, indent=1))
    for stage in ("frames", "sfm"):
        (ws / stage / "_SUCCESS.json").write_text(json.dumps({"stage": stage, **meta}, indent=1, sort_keys=True))
    (ws / "request.json").write_text(json.dumps({
        "request_id": "gt-synthetic", "input": str(gt / "cameras.json"),
        "options": {"preset": "preview"}, "stages": ["frames", "sfm", "depth", "splat", "mesh"]}))
    return GTWorkspace(ws, gt, spec)


def _cache_root() -> Path:
    root = Path(os.environ.get("SPLATPIPE_TEST_CACHE", REPO / ".cache" / "test-samples"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cached_gt_workspace(spec: GTSpec = GTSpec()) -> GTWorkspace:
    """The ground-truth workspace for `spec`, built once into the test cache (read it, copy it)."""
    out = _cache_root() / spec.key
    if not (out / "ws" / "sfm" / "_SUCCESS.json").exists():
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_gt_workspace(tmp, spec)
        try:
            tmp.rename(out)
        except OSError:  # another run finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return GTWorkspace(out / "ws", out / "gt", spec)


def copy_gt_workspace(dest: Path, spec: GTSpec = GTSpec()) -> GTWorkspace:
    """A private, writable copy of the cached workspace at `dest` (ground truth stays shared)."""
    src = cached_gt_workspace(spec)
    shutil.copytree(src.workspace, dest)
    return GTWorkspace(dest, src.gt_dir, spec)


SMALL = GTSpec(n_frames=12, video_frames=36, width=240, height=180, n_points=2500)
PREVIEW = GTSpec()  # 40 of 90 frames at 480x360: the preview preset's input size


@pytest.fixture
def small_gt_workspace(tmp_path: Path) -> GTWorkspace:
    """12 views at 240x180: quick stage runs."""
    return copy_gt_workspace(tmp_path / "ws", SMALL)


@pytest.fixture
def gt_workspace(tmp_path: Path) -> GTWorkspace:
    """40 views at 480x360 (the synthetic video's frames after the preview `frames` stage)."""
    return copy_gt_workspace(tmp_path / "ws", PREVIEW)


def visible_surface(gt: GTWorkspace, n: int = 100_000) -> np.ndarray:
    """True-surface samples that at least one of the workspace's cameras sees (not occluded)."""
    pts = gt.surface()[:n].astype(np.float64)
    seen = np.zeros(len(pts), bool)
    for name, cam in gt.cameras().items():
        K, R, t = np.array(cam["K"]), np.array(cam["R"]), np.array(cam["t"])
        depth = gt.true_depth(name)
        pc = pts @ R.T + t
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (pc @ K.T)[:, :2] / z[:, None]
        ok = (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < cam["width"]) & (uv[:, 1] >= 0) & (uv[:, 1] < cam["height"])
        idx = np.flatnonzero(ok)
        px = np.floor(uv[idx]).astype(int)
        zd = depth[px[:, 1], px[:, 0]]
        seen[idx[np.abs(zd - z[idx]) < 0.02 * z[idx] + 0.02]] = True
    return pts[seen]


def mesh_surface_distances(mesh_path: Path, gt: GTWorkspace, n_samples: int = 100_000) -> dict[str, float]:
    """Accuracy (mesh -> true surface), completeness (seen true surface -> mesh), their mean (chamfer), metres."""
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(mesh_path))
    o3d.utility.random.seed(0)
    mesh_pts = mesh.sample_points_uniformly(number_of_points=n_samples)
    truth = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(gt.surface().astype(np.float64)))
    seen = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(visible_surface(gt)))
    acc = np.asarray(mesh_pts.compute_point_cloud_distance(truth))
    comp = np.asarray(seen.compute_point_cloud_distance(mesh_pts))
    return {"accuracy_mean": float(acc.mean()), "accuracy_median": float(np.median(acc)),
            "accuracy_p90": float(np.percentile(acc, 90)), "completeness_mean": float(comp.mean()),
            "completeness_median": float(np.median(comp)), "chamfer": float(0.5 * (acc.mean() + comp.mean())),
            "completeness_within_5cm": float((comp < 0.05).mean())}
