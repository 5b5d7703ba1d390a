"""SIFT features and verified matches into a COLMAP database, in chunks so progress shows.

pycolmap's extraction and matching are single native calls with no progress callback; they
run here over slices of the images / pairs, each slice one call, with the progress reported
between slices. SIFT, matching and bundle adjustment run on the GPU only when pycolmap was built
with CUDA *and* the machine has a CUDA device (`use_gpu`): the CUDA build also runs on the CPU-only
sfm VMs, where asking it for the GPU fails or falls back per call.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Progress = Callable[[float, str], None]
SMALL_IMAGE_LONG_SIDE = 1000  # below this, SIFT starts on the 2x upsampled image
# Each native call has a fixed cost and extracts its images in parallel: slices are no smaller
# than a few images per core.
MIN_IMAGES_PER_CALL = 2 * (os.cpu_count() or 2)
MIN_PAIRS_PER_CALL = 50


@dataclass
class CameraSetup:
    """How the images map to cameras and what is known of their focal lengths."""

    single: bool  # one camera (intrinsics shared by every image)
    focal_px: dict[str, float]  # image name -> EXIF/container focal prior, pixels


def cuda_device_count() -> int:
    """CUDA devices the driver shows this process (honours CUDA_VISIBLE_DEVICES); 0 without a
    driver. Asks libcuda directly: cheap, and needs neither torch nor a GPU build of anything."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


@functools.cache
def use_gpu() -> bool:
    """SIFT, matching and bundle adjustment on the GPU: pycolmap has CUDA and a device is there.
    `SPLATPIPE_DEVICE=cpu` forces the CPU (tests of the CPU path on a GPU machine)."""
    import pycolmap

    if os.environ.get("SPLATPIPE_DEVICE", "").lower() == "cpu":
        return False
    return bool(pycolmap.has_cuda) and cuda_device_count() > 0


def device() -> Any:
    import pycolmap

    return pycolmap.Device.cuda if use_gpu() else pycolmap.Device.cpu


def device_name() -> str:
    return "cuda" if use_gpu() else "cpu"


def sift_first_octave(long_side: int) -> int:
    """-1 (upsample first) for small images, where the finest scale matters; 0 for large ones,
    which have features enough at full resolution, 4x cheaper to extract and as accurate."""
    return -1 if long_side < SMALL_IMAGE_LONG_SIDE else 0


def extract(database: Path, image_dir: Path, names: Sequence[str], setup: CameraSetup,
            max_num_features: int, first_octave: int, progress: Progress, chunks: int = 10) -> None:
    import pycolmap

    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_num_features)
    opts.sift.first_octave = int(first_octave)
    opts.use_gpu = use_gpu()
    step = max(MIN_IMAGES_PER_CALL, math.ceil(len(names) / chunks))
    camera_id = -1
    for start in range(0, len(names), step):
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "SIMPLE_RADIAL"
        mode = pycolmap.CameraMode.SINGLE if setup.single else pycolmap.CameraMode.PER_IMAGE
        if setup.single and camera_id > 0:
            reader.existing_camera_id = camera_id  # later slices share the first slice's camera
        pycolmap.extract_features(str(database), str(image_dir), image_names=list(names[start:start + step]),
                                  camera_mode=mode, reader_options=reader, extraction_options=opts,
                                  device=device())
        if setup.single and camera_id < 0:
            db = pycolmap.Database.open(str(database))
            try:
                camera_id = min(c.camera_id for c in db.read_all_cameras())
            finally:
                db.close()
        done = min(len(names), start + step)
        progress(done / len(names), f"SIFT features: {done}/{len(names)} images")


def apply_focal_priors(database: Path, setup: CameraSetup) -> int:
    """Set EXIF focal lengths as priors on the database's cameras; returns how many got one."""
    import pycolmap

    if not setup.focal_px:
        return 0
    db = pycolmap.Database.open(str(database))
    try:
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        by_camera: dict[int, list[float]] = {}
        for im in db.read_all_images():
            if im.name in setup.focal_px:
                by_camera.setdefault(im.camera_id, []).append(setup.focal_px[im.name])
        write_focal_priors(db, [cameras[cid] for cid in by_camera],
                           {cid: itertools.repeat(float(np.median(f))) for cid, f in by_camera.items()})
        return len(by_camera)
    finally:
        db.close()


def write_focal_priors(db: Any, cameras: Iterable[Any], focals: Mapping[int, Iterable[float]]) -> None:
    """Set the focal length parameters of `cameras` (of the open database `db`) to `focals[camera_id]`
    (one value per focal parameter, in `focal_length_idxs` order) and mark them as priors."""
    for cam in cameras:
        params = np.asarray(cam.params, np.float64).copy()
        for i, value in zip(cam.focal_length_idxs(), focals[cam.camera_id], strict=False):
            params[i] = value
        cam.params = params
        cam.has_prior_focal_length = True
        db.update_camera(cam)


def image_ids(database: Path) -> dict[str, int]:
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        return {im.name: im.image_id for im in db.read_all_images()}
    finally:
        db.close()


def descriptors(database: Path, names: Sequence[str], per_image: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Up to `per_image` SIFT descriptors of each image (a random subset), as float32."""
    import pycolmap

    rng = np.random.default_rng(seed)
    ids = image_ids(database)
    out = []
    db = pycolmap.Database.open(str(database))
    try:
        for n in names:
            raw = db.read_descriptors(ids[n])
            d = np.asarray(getattr(raw, "data", raw), np.float32)
            if len(d) > per_image:
                d = d[rng.choice(len(d), per_image, replace=False)]
            out.append(d)
    finally:
        db.close()
    return out


def match_pairs(database: Path, names: Sequence[str], pairs: Sequence[tuple[int, int]], work: Path,
                progress: Progress, chunks: int = 10) -> None:
    """Match and geometrically verify `pairs` (indices into `names`)."""
    import pycolmap

    step = max(MIN_PAIRS_PER_CALL, math.ceil(len(pairs) / chunks))
    opts = pycolmap.FeatureMatchingOptions()
    opts.use_gpu = use_gpu()
    for k, start in enumerate(range(0, len(pairs), step)):
        chunk = pairs[start:start + step]
        pair_file = work / f"pairs-{k:03d}.txt"
        pair_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in chunk))
        pairing = pycolmap.ImportedPairingOptions()
        pairing.match_list_path = str(pair_file)
        pycolmap.match_image_pairs(str(database), matching_options=opts, pairing_options=pairing, device=device())
        done = min(len(pairs), start + step)
        progress(done / len(pairs), f"matching: {done}/{len(pairs)} pairs")


def verified_pairs(database: Path, min_inliers: int = 15) -> set[tuple[str, str]]:
    """Name pairs (sorted) whose geometric verification kept at least `min_inliers` matches."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
    finally:
        db.close()
    out: set[tuple[str, str]] = set()
    for pid, n in zip(pair_ids, inliers, strict=True):
        if n >= min_inliers:
            a, b = pycolmap.pair_id_to_image_pair(pid)
            first, second = sorted((names[a], names[b]))
            out.add((first, second))
    return out


def camera_summary(cam: Any) -> dict[str, Any]:
    return {"model": cam.model_name if hasattr(cam, "model_name") else str(cam.model),
            "width": int(cam.width), "height": int(cam.height),
            "params": [round(float(p), 6) for p in cam.params]}
