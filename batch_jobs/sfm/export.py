"""The sfm stage's outputs from a COLMAP model: undistortion, `transforms.json`, `points.ply`.

`transforms.json` follows the nerfstudio / instant-ngp layout: per frame `file_path` and a
camera-to-world `transform_matrix` in the OpenGL camera convention (x right, y up, z back);
intrinsics `fl_x, fl_y, cx, cy, w, h` at the top when one camera took every image, else per
frame; `camera_model: OPENCV` with zero distortion (the images are undistorted). The world frame
is COLMAP's, unchanged, so `applied_transform` is the identity, and `points.ply` (binary PLY:
x, y, z float, red, green, blue uchar) is in the same frame as `sparse/0`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

# COLMAP camera axes (x right, y down, z forward) -> OpenGL (x right, y up, z back).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def undistort(model_dir: Path, image_dir: Path, work: Path, out_images: Path, out_sparse: Path,
              jpeg_quality: int = 95) -> Any:
    """Undistort `image_dir` with the model in `model_dir` into a PINHOLE model + images.

    Writes `out_images/*.jpg` and `out_sparse/{cameras,images,points3D}.bin`; returns the
    undistorted `pycolmap.Reconstruction`.
    """
    import pycolmap

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pycolmap.undistort_images(str(work), str(model_dir), str(image_dir), output_type="COLMAP",
                              jpeg_quality=jpeg_quality)
    rec = pycolmap.Reconstruction(str(work / "sparse"))
    shutil.rmtree(out_images, ignore_errors=True)
    shutil.move(str(work / "images"), str(out_images))
    out_sparse.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(out_sparse))
    shutil.rmtree(work, ignore_errors=True)
    return rec


def _intrinsics(camera: Any) -> dict[str, Any]:
    K = np.asarray(camera.calibration_matrix(), np.float64)
    w, h = int(camera.width), int(camera.height)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    return {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": w, "h": h,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
            "camera_angle_x": 2.0 * math.atan(w / (2.0 * fx)),
            "camera_angle_y": 2.0 * math.atan(h / (2.0 * fy))}


def camera_to_world_gl(cam_from_world: np.ndarray) -> np.ndarray:
    """4x4 OpenGL camera-to-world from a 3x4 COLMAP world-to-camera matrix."""
    w2c = np.eye(4)
    w2c[:3, :4] = cam_from_world
    return np.linalg.inv(w2c) @ _CV_TO_GL


def transforms(rec: Any, image_prefix: str = "images/", ply_file: str | None = "points.ply") -> dict[str, Any]:
    """The nerfstudio / instant-ngp `transforms.json` document of a (PINHOLE) reconstruction."""
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    camera_ids = {im.camera_id for im in images}
    doc: dict[str, Any] = {"camera_model": "OPENCV"}
    shared = len(camera_ids) == 1
    if shared:
        doc.update(_intrinsics(rec.cameras[next(iter(camera_ids))]))
    frames = []
    for im in images:
        c2w = camera_to_world_gl(np.asarray(im.cam_from_world().matrix(), np.float64))
        f: dict[str, Any] = {"file_path": f"{image_prefix}{im.name}", "transform_matrix": c2w.tolist(),
                             "colmap_im_id": int(im.image_id)}
        if not shared:
            f.update(_intrinsics(rec.cameras[im.camera_id]))
        frames.append(f)
    doc["frames"] = frames
    doc["applied_transform"] = np.eye(4)[:3].tolist()
    if ply_file:
        doc["ply_file_path"] = ply_file
    return doc


def write_transforms(rec: Any, path: Path) -> None:
    path.write_text(json.dumps(transforms(rec), indent=1))


def points_arrays(rec: Any) -> tuple[np.ndarray, np.ndarray]:
    """(xyz float64 [P, 3], rgb uint8 [P, 3]) of the model's 3D points, by point id."""
    ids = sorted(rec.points3D)
    if not ids:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    xyz = np.stack([np.asarray(rec.points3D[i].xyz, np.float64) for i in ids])
    rgb = np.stack([np.asarray(rec.points3D[i].color, np.uint8) for i in ids])
    return xyz, rgb


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY with x, y, z (float32) and red, green, blue (uchar)."""
    n = len(xyz)
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                             ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = (xyz[:, i].astype(np.float32) for i in range(3))
    rec["red"], rec["green"], rec["blue"] = (rgb[:, i] for i in range(3))
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {n}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              "end_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read back what `write_ply` wrote."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = int(next(line for line in data[:end].decode().splitlines() if line.startswith("element vertex")).split()[-1])
    rec = np.frombuffer(data[end:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                           ("red", "u1"), ("green", "u1"), ("blue", "u1")], count=n)
    xyz = np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float64)
    rgb = np.stack([rec["red"], rec["green"], rec["blue"]], 1)
    return xyz, rgb
