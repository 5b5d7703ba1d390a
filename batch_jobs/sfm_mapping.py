"""Mapping: GLOMAP global SfM first, incremental SfM when the global model is not good enough.

Global mapping needs calibrated two-view geometries: from focal priors (EXIF) set before
matching, else from `calibrate_view_graph`, which estimates the focal lengths from the
fundamental matrices. Its global positioning is a non-linear problem over every track; it is
solved on a subset of tracks (`track_required_tracks_per_view` per image, measured: the same
poses at a fraction of the time), then bundle adjustment and retriangulation bring the rest.

For a photo set taken with one camera (a shared camera over at least
REFINE_PRINCIPAL_MIN_IMAGES photos from spread viewpoints), the global bundle adjustment also
refines the principal point: measured on the LiDAR-scanned datasets, whose true principal point
is 8 px off centre, this halves the camera-centre error and cuts the rotation error from 0.5 to
0.1 degrees. Not for videos: along a smooth path the principal point trades off against the
camera tilt (measured on the synthetic orbit: refining it moved it 5 px and turned every
camera by 0.6 degrees).

A model is *sane* when it registers nearly every image, its reprojection error is small, and
its focal lengths, principal points and distortion are plausible. An insane global model falls back to the
incremental mapper; of the models made, the largest sane one is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs import sfm_features

Progress = Callable[[float, str], None]

SEED = 0  # deterministic RANSAC and solvers: the same input gives the same model
GLOBAL_TRACKS_PER_VIEW = 1000
MIN_REGISTERED_FRACTION = 0.95  # a global model registering fewer images falls back
MAX_REPROJECTION_ERROR_PX = 2.0
FOCAL_RANGE = (0.25, 4.0)  # focal / long side
MAX_RADIAL = 0.5  # |k| of SIMPLE_RADIAL
MAX_PRINCIPAL_OFFSET = 0.1  # principal point off centre, in image sizes
REFINE_PRINCIPAL_MIN_IMAGES = 8


@dataclass
class ModelCheck:
    registered: int
    total: int
    points: int
    reprojection_error: float
    problems: list[str] = field(default_factory=list)

    @property
    def sane(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"registered": self.registered, "total": self.total, "points": self.points,
                "reprojection_error": round(self.reprojection_error, 4), "problems": self.problems}


@dataclass
class Attempt:
    mapper: str  # "global" | "incremental"
    seconds: float
    model: Any | None  # the largest pycolmap.Reconstruction made, None when none
    check: ModelCheck | None
    error: str | None = None
    focal_source: str | None = None  # global: "prior" | "calibrate_view_graph"
    refined_principal_point: bool = False
    verification: Any | None = None  # sfm_verify.Verification, once the model was verified

    def to_dict(self) -> dict[str, Any]:
        v = self.verification
        return {"mapper": self.mapper, "seconds": round(self.seconds, 3), "error": self.error,
                "focal_source": self.focal_source, "refined_principal_point": self.refined_principal_point,
                **(self.check.to_dict() if self.check else {}),
                "verification": None if v is None else {"passed": v.passed, "problems": v.problems,
                                                        "figures": v.figures}}


def check_model(rec: Any, total: int) -> ModelCheck:
    reg = int(rec.num_reg_images())
    err = float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else float("inf")
    chk = ModelCheck(reg, total, int(rec.num_points3D()), err)
    if reg < MIN_REGISTERED_FRACTION * total:
        chk.problems.append(f"registered {reg} of {total} images")
    if not err < MAX_REPROJECTION_ERROR_PX:
        chk.problems.append(f"mean reprojection error {err:.2f} px")
    if chk.points < 10 * max(1, reg):
        chk.problems.append(f"only {chk.points} points")
    for cam in rec.cameras.values():
        f = float(np.mean([cam.params[i] for i in cam.focal_length_idxs()]))
        ratio = f / max(cam.width, cam.height)
        if not FOCAL_RANGE[0] <= ratio <= FOCAL_RANGE[1]:
            chk.problems.append(f"camera {cam.camera_id}: focal {ratio:.2f} x long side")
        off_x = abs(cam.principal_point_x - cam.width / 2) / cam.width
        off_y = abs(cam.principal_point_y - cam.height / 2) / cam.height
        if max(off_x, off_y) > MAX_PRINCIPAL_OFFSET:
            chk.problems.append(f"camera {cam.camera_id}: principal point {max(off_x, off_y):.2f} off centre")
        extra = [abs(float(cam.params[i])) for i in cam.extra_params_idxs()]
        if extra and max(extra) > MAX_RADIAL:
            chk.problems.append(f"camera {cam.camera_id}: distortion {max(extra):.2f}")
    return chk


def _largest(recs: dict[int, Any]) -> Any | None:
    if not recs:
        return None
    return max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


def run_global(database: Path, image_dir: Path, out: Path, total: int, has_priors: bool,
               progress: Progress, refine_principal_point: bool = False) -> Attempt:
    import pycolmap

    t0 = time.perf_counter()
    focal_source = "prior" if has_priors else "calibrate_view_graph"
    try:
        if not has_priors:
            progress(0.0, "calibrating the view graph (focal lengths from fundamental matrices)")
            opts = pycolmap.ViewGraphCalibrationOptions()
            opts.random_seed = SEED
            if not pycolmap.calibrate_view_graph(str(database), opts):
                return Attempt("global", time.perf_counter() - t0, None, None,
                               "view graph calibration failed", focal_source)
        progress(0.1, "global mapping (rotation averaging, global positioning, bundle adjustment)")
        opts = pycolmap.GlobalPipelineOptions()
        opts.random_seed = SEED
        opts.mapper.random_seed = SEED
        opts.mapper.track_required_tracks_per_view = GLOBAL_TRACKS_PER_VIEW
        opts.mapper.bundle_adjustment.refine_principal_point = refine_principal_point
        # pycolmap defaults this to True; on a CUDA build without a device that must not be asked.
        opts.mapper.bundle_adjustment.ceres.use_gpu = sfm_features.use_gpu()
        out.mkdir(parents=True, exist_ok=True)
        recs = pycolmap.global_mapping(str(database), str(image_dir), str(out), opts)
    except Exception as exc:  # a failed attempt is a reason to fall back, not to stop
        return Attempt("global", time.perf_counter() - t0, None, None, f"{type(exc).__name__}: {exc}",
                       focal_source)
    rec = _largest(recs)
    return Attempt("global", time.perf_counter() - t0, rec, check_model(rec, total) if rec else None,
                   None if rec else "no model", focal_source, refine_principal_point)


def run_incremental(database: Path, image_dir: Path, out: Path, total: int, progress: Progress) -> Attempt:
    import pycolmap

    t0 = time.perf_counter()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.random_seed = SEED
    opts.ba_use_gpu = sfm_features.use_gpu()  # not merely a CUDA build: a device must be there
    registered = [0]

    def next_image() -> None:
        registered[0] += 1
        progress(min(1.0, registered[0] / max(1, total)),
                 f"incremental mapping: {min(registered[0], total)}/{total} images registered")

    try:
        out.mkdir(parents=True, exist_ok=True)
        recs = pycolmap.incremental_mapping(str(database), str(image_dir), str(out), opts,
                                            next_image_callback=next_image)
    except Exception as exc:
        return Attempt("incremental", time.perf_counter() - t0, None, None, f"{type(exc).__name__}: {exc}")
    rec = _largest(recs)
    return Attempt("incremental", time.perf_counter() - t0, rec, check_model(rec, total) if rec else None,
                   None if rec else "no model")


def choose(attempts: list[Attempt]) -> Attempt | None:
    """The largest sane model; with none sane, the largest (ties: lower reprojection error)."""
    made = [a for a in attempts if a.model is not None and a.check is not None]
    if not made:
        return None
    sane = [a for a in made if a.check.sane] or made
    return max(sane, key=lambda a: (a.check.registered, -a.check.reprojection_error))


def reconstruct(database: Path, image_dir: Path, work: Path, total: int, mapper: str, has_priors: bool,
                progress: Progress, refine_principal_point: bool = False) -> tuple[Attempt | None, list[Attempt]]:
    """Run the mappers `mapper` asks for (`auto`, `global`, `incremental`); returns (chosen, all).

    `refine_principal_point`: the caller's judgement that the input observes it (a photo set of
    one camera); applied to the global mapper when there are enough images."""
    import pycolmap

    pycolmap.set_random_seed(SEED)
    attempts: list[Attempt] = []
    if mapper in ("auto", "global"):
        g = run_global(database, image_dir, work / "global", total, has_priors,
                       lambda f, m: progress(0.6 * f, m),
                       refine_principal_point=refine_principal_point and total >= REFINE_PRINCIPAL_MIN_IMAGES)
        attempts.append(g)
        if mapper == "global" or (g.check is not None and g.check.sane):
            return choose(attempts), attempts
        why = g.error or "; ".join(g.check.problems if g.check else [])
        progress(0.6, f"global model not good enough ({why}); incremental mapping")
    attempts.append(run_incremental(database, image_dir, work / "incremental", total,
                                    lambda f, m: progress(0.6 + 0.4 * f if mapper == "auto" else f, m)))
    return choose(attempts), attempts
