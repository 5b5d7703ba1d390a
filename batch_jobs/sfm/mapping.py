"""Mapping: incremental SfM (COLMAP's) and GLOMAP global SfM, the one checking the other.

Global mapping needs calibrated two-view geometries, so it needs the focal lengths first:
- from focal priors (EXIF) set before matching;
- else from *self-calibration*: incremental mapping, which refines the focal length in bundle
  adjustment from its 1.2 x long side initial guess, on at most SELF_CALIBRATION_IMAGES images
  spread evenly over the set; its cameras become the priors. When it covers every image, its
  model is a candidate of its own.
- else (self-calibration made no sane model) from `calibrate_view_graph`, which estimates the
  focal lengths from the fundamental matrices. That estimate is degenerate when the cameras'
  optical axes meet, which is every capture that circles an object: measured on `fox` (a phone
  orbit, no EXIF), it stayed at its initial guess, 1531 px against the true 917 px, and GLOMAP
  built a model 86 % of the rig radius off from it that registered every image at 1.3 px; from
  the self-calibrated 924 px it is 0.19 % off (docs/benchmarks.md, "SfM robustness").
Both mark their estimates as priors in the database for GLOMAP; after it they are unmarked (the
values stay as starting points), so an incremental mapping of the same database (the fallback, a
retry) estimates the focal length again rather than taking it as known. On a sequence matched
sequentially the self-calibration's images are at most `sequential_overlap` apart (a block from
the middle of a long one), so that they were matched to each other.
Its global positioning is a non-linear problem over every track; it is solved on a subset of
tracks (`track_required_tracks_per_view` per image, measured: the same poses at a fraction of the
time), then bundle adjustment and retriangulation bring the rest.

For a photo set taken with one camera (a shared camera over at least
REFINE_PRINCIPAL_MIN_IMAGES photos from spread viewpoints), the global bundle adjustment also
refines the principal point: measured on the LiDAR-scanned datasets, whose true principal point
is 8 px off centre, this halves the camera-centre error and cuts the rotation error from 0.5 to
0.1 degrees. Not for videos: along a smooth path the principal point trades off against the
camera tilt (measured on the synthetic orbit: refining it moved it 5 px and turned every
camera by 0.6 degrees).

When the self-calibration mapped every image sanely, its model (its principal point refined by
one more bundle adjustment where the input observes it) is the candidate, and GLOMAP runs only
if it fails verification (`remaining`, which also runs the incremental mapper after a global
model that failed). Measured (docs/benchmarks.md, "SfM robustness"): on `fox` GLOMAP on the same
matches was 0.17, 0.18, 0.53, 0.84 and twice 82-83 % of the rig radius off across thread counts
(the last caught by verification); the incremental model with its principal point refined
0.18-0.20 % on 1, 2, 4 and 8 threads; on the LiDAR sets 0.106 % (Herz-Jesus-P8, GLOMAP
0.12 %) and 0.062 % (fountain-P11, GLOMAP 0.06 %), in less time.

A model is *sane* when it registers nearly every image, its reprojection error is small, and
its focal lengths, principal points and distortion are plausible. An insane global model falls
back to incremental mapping of every image (unless the self-calibration already was one); of the
models made, the largest sane one is kept, the global one first where they tie (with EXIF
priors, or `mapper: global`; in `auto` without them a sane self-calibration of every image
stops before GLOMAP). `mapper: incremental` runs COLMAP's mapper only, `mapper: global` GLOMAP
first, then incremental mapping if its model fails verification.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from batch_jobs.sfm import features as sfm_features
from batch_jobs.sfm import pairs as sfm_pairs

if TYPE_CHECKING:
    from batch_jobs.sfm import verify as sfm_verify

Progress = Callable[[float, str], None]

SEED = 0  # deterministic RANSAC and solvers: the same input gives the same model
GLOBAL_TRACKS_PER_VIEW = 1000
MIN_REGISTERED_FRACTION = 0.95  # a global model registering fewer images falls back
# Incremental mapping on at most this many images finds the focal lengths; when that covers every
# image its model is the candidate (reconstruct). 60: fox at `standard` (50 photos) measured 0.78 %
# of the rig radius once through GLOMAP after a 40-image self-calibration (0.18-0.19 % other runs).
SELF_CALIBRATION_IMAGES = 60
# A self-calibration model that registers less than this share of its images gives no priors.
SELF_CALIBRATION_MIN_FRACTION = 0.6
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
    focal_source: str | None = None  # global: "prior" | "self_calibration" | "calibrate_view_graph"
    images: int | None = None  # the images it was asked to map, when not all (self-calibration)
    refined_principal_point: bool = False
    principal_point_evidence: float | None = None  # with_principal_point's test statistic, when run
    verification: sfm_verify.Verification | None = None  # once the model was verified

    def to_dict(self) -> dict[str, Any]:
        v = self.verification
        return {"mapper": self.mapper, "seconds": round(self.seconds, 3), "error": self.error,
                "focal_source": self.focal_source, "images": self.images, "refined_principal_point": self.refined_principal_point,
                "principal_point_evidence": self.principal_point_evidence,
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
               progress: Progress, refine_principal_point: bool = False, focal_source: str = "prior") -> Attempt:
    """Global mapping; `has_priors`: every camera in the database has a focal length prior
    (`focal_source` says where it came from), else `calibrate_view_graph` estimates them."""
    import pycolmap

    t0 = time.perf_counter()
    focal_source = focal_source if has_priors else "calibrate_view_graph"
    try:
        if not has_priors:
            progress(0.0, "calibrating the view graph (focal lengths from fundamental matrices)")
            calibration = pycolmap.ViewGraphCalibrationOptions()
            calibration.random_seed = SEED
            if not pycolmap.calibrate_view_graph(str(database), calibration):
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
                   None if rec else "no model", focal_source, refined_principal_point=refine_principal_point)


def run_incremental(database: Path, image_dir: Path, out: Path, total: int, progress: Progress,
                    image_names: list[str] | None = None) -> Attempt:
    """Incremental mapping of every image, or of `image_names` only."""
    import pycolmap

    t0 = time.perf_counter()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.random_seed = SEED
    opts.ba_use_gpu = sfm_features.use_gpu()  # not merely a CUDA build: a device must be there
    if image_names is not None:
        opts.image_names = list(image_names)
    asked = total if image_names is None else len(image_names)
    registered = [0]

    def next_image() -> None:
        registered[0] += 1
        progress(min(1.0, registered[0] / max(1, asked)),
                 f"incremental mapping: {min(registered[0], asked)}/{asked} images registered")

    try:
        out.mkdir(parents=True, exist_ok=True)
        recs = pycolmap.incremental_mapping(str(database), str(image_dir), str(out), opts,
                                            next_image_callback=next_image)
    except Exception as exc:
        return Attempt("incremental", time.perf_counter() - t0, None, None, f"{type(exc).__name__}: {exc}",
                       images=None if image_names is None else asked)
    rec = _largest(recs)
    return Attempt("incremental", time.perf_counter() - t0, rec, check_model(rec, total) if rec else None,
                   None if rec else "no model", images=None if image_names is None else asked)


def self_calibrate(database: Path, image_dir: Path, out: Path, names: list[str], progress: Progress,
                   max_spacing: int | None = None) -> tuple[Attempt, bool]:
    """Incremental mapping of an even subset of `names` (all of them when few); when its model is
    good enough, its cameras' focal lengths become the database's priors. `max_spacing`: the
    widest gap between chosen images that were matched to each other (sequential matching), so
    a long sequence gives a contiguous, evenly spaced block from its middle. Returns (the
    attempt, whether every camera of the database has a prior now)."""
    n, k = len(names), SELF_CALIBRATION_IMAGES
    idx = sfm_pairs.evenly_spaced(n, k)
    if max_spacing and n > k and (n - 1) / (k - 1) > max_spacing:
        start = (n - 1 - max_spacing * (k - 1)) // 2
        idx = [start + i * max_spacing for i in range(k)]
    subset = [names[i] for i in idx]
    whole = len(subset) == n
    a = run_incremental(database, image_dir, out, n, progress, None if whole else subset)
    if a.model is None or a.check is None:
        return a, False
    # A subset model is judged against its own images; a model of every image by the usual rules.
    check = a.check if whole else check_model(a.model, len(subset))
    enough = check.registered >= SELF_CALIBRATION_MIN_FRACTION * len(subset)
    plausible = not [p for p in check.problems if "registered" not in p]
    if not (enough and plausible):
        return a, False
    return a, set_focal_priors(database, a.model)


def with_principal_point(a: Attempt, total: int) -> Attempt:
    """`a`'s model after one more bundle adjustment that also refines the principal point (COLMAP's
    incremental mapper keeps it at the image centre), when the photos show where it is; else `a`.

    Whether they show it is the Bayesian information criterion for the two added parameters:
    the same bundle adjustment without them is the control, and the likelihood ratio
    2 N (e0^2 - e1^2) / e1^2 over N observations of mean error e0 (control) and e1 (refined),
    Gaussian pixel noise assumed, must exceed 2 ln(2N) (2N residuals). Where every camera looks at
    one point from one distance (an orbit), the principal point trades off against a common tilt:
    measured on the synthetic 12-photo orbit (true principal point at the centre), refining moved
    it 6.4 px and tilted every camera 0.7 deg for a ratio far under the bar; on the real captures
    it was far over it (docs/benchmarks.md, "SfM robustness"), and refining took fox's camera
    centres from 0.33 to 0.18 % of the rig radius off."""
    import pycolmap

    if a.model is None:
        return a
    t0 = time.perf_counter()
    errors = []
    models = []
    for refine in (False, True):
        rec = pycolmap.Reconstruction(a.model)
        opts = pycolmap.BundleAdjustmentOptions()
        opts.refine_principal_point = refine
        opts.print_summary = False
        opts.ceres.use_gpu = sfm_features.use_gpu()
        try:
            pycolmap.bundle_adjustment(rec, opts)
        except Exception:  # the unrefined model stands
            a.seconds += time.perf_counter() - t0
            return a
        errors.append(rec.compute_mean_reprojection_error())
        models.append(rec)
    n = a.model.compute_num_observations()
    e0, e1 = errors
    evidence = 2.0 * n * (e0 ** 2 - e1 ** 2) / max(e1 ** 2, 1e-12)
    a.principal_point_evidence = round(float(evidence), 1)
    a.seconds += time.perf_counter() - t0
    check = check_model(models[1], total)
    if evidence <= 2.0 * math.log(max(2 * n, 2)) or not check.sane:
        return a
    return Attempt(a.mapper, a.seconds, models[1], check, None, a.focal_source, images=a.images,
                   refined_principal_point=True, principal_point_evidence=a.principal_point_evidence)


def set_focal_priors(database: Path, model: Any) -> bool:
    """Write the focal lengths of `model`'s cameras to the database's cameras of the same ids that
    have no prior yet (EXIF priors stay), marked as priors; True when every camera of the
    database has a prior now."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        cameras = db.read_all_cameras()
        solved = [c for c in cameras if not c.has_prior_focal_length and c.camera_id in model.cameras]
        sfm_features.write_focal_priors(db, solved, {
            c.camera_id: [float(model.cameras[c.camera_id].params[i]) for i in c.focal_length_idxs()] for c in solved})
        ids = {c.camera_id for c in solved}
        return all(c.has_prior_focal_length or c.camera_id in ids for c in cameras)
    finally:
        db.close()


def prior_cameras(database: Path) -> set[int]:
    """The database's cameras with a focal length prior."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        return {int(c.camera_id) for c in db.read_all_cameras() if c.has_prior_focal_length}
    finally:
        db.close()


def release_focal_priors(database: Path, keep: set[int]) -> None:
    """Unmark every focal prior but those of `keep` (EXIF's); the values stay as starting points.
    Self-calibration and `calibrate_view_graph` mark their estimates as priors for GLOMAP, and an
    incremental mapper treats a prior as known and would not estimate it again: a later mapping
    of the same database (the fallback, a retry) must not inherit that."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        for cam in db.read_all_cameras():
            if cam.has_prior_focal_length and cam.camera_id not in keep:
                cam.has_prior_focal_length = False
                db.update_camera(cam)
    finally:
        db.close()


def choose(attempts: list[Attempt]) -> Attempt | None:
    """The largest sane model of every image; with none sane, the largest (ties: the global
    model, then the lower reprojection error)."""
    made = [a for a in attempts if a.model is not None and a.check is not None]
    if not made:
        return None
    return min(made, key=preference)


def preference(a: Attempt) -> tuple[bool, bool, int, bool, float]:
    """Sort key, best first: sane, of every image (not a self-calibration subset), most
    registered, global (with EXIF priors it refines the principal point; measured more accurate
    than incremental mapping without), lowest error."""
    assert a.check is not None
    return (not a.check.sane, a.images is not None, -a.check.registered, a.mapper != "global",
            a.check.reprojection_error)


def reconstruct(database: Path, image_dir: Path, work: Path, names: list[str], mapper: str, has_priors: bool,
                progress: Progress, refine_principal_point: bool = False,
                max_spacing: int | None = None) -> tuple[Attempt | None, list[Attempt]]:
    """Run the mappers `mapper` asks for (`auto`, `global`, `incremental`) on the images `names`;
    returns (chosen, all).

    `has_priors`: every image's camera has an EXIF focal prior in the database. Without, `auto`
    and `global` self-calibrate first (module docstring). `refine_principal_point`: the caller's
    judgement that the input observes it (a photo set of one camera); applied to the global
    mapper, or to the self-calibration's model (`with_principal_point`), when there are enough
    images. When `auto`'s self-calibration mapped every image sanely, that model is the candidate
    and GLOMAP runs only if it fails verification (module docstring, `remaining`).
    `max_spacing`: see self_calibrate."""
    import pycolmap

    pycolmap.set_random_seed(SEED)
    total = len(names)
    refine_pp = _refines_principal_point(refine_principal_point, total)
    attempts: list[Attempt] = []
    if mapper in ("auto", "global"):
        focal_source = "prior"
        exif = prior_cameras(database)
        if not has_priors:
            progress(0.0, "self-calibration: incremental mapping for the focal length")
            cal, has_priors = self_calibrate(database, image_dir, work / "calibration", names,
                                                     lambda f, m: progress(0.4 * f, m), max_spacing)
            attempts.append(cal)
            focal_source = "self_calibration"
            if mapper == "auto" and cal.images is None and cal.check is not None and cal.check.sane:
                if refine_pp:
                    attempts[-1] = with_principal_point(cal, total)
                release_focal_priors(database, exif)
                return choose(attempts), attempts
        g = run_global(database, image_dir, work / "global", total, has_priors,
                       lambda f, m: progress(0.4 + 0.4 * f, m), refine_principal_point=refine_pp,
                       focal_source=focal_source)
        attempts.append(g)
        release_focal_priors(database, exif)
        whole = [a for a in attempts if a.images is None]
        if mapper == "global" or any(a.check is not None and a.check.sane for a in whole):
            return choose(attempts), attempts
        if any(a.mapper == "incremental" for a in whole):  # the self-calibration mapped every image
            return choose(attempts), attempts
        why = g.error or "; ".join(g.check.problems if g.check else [])
        progress(0.8, f"global model not good enough ({why}); incremental mapping")
    attempts.append(run_incremental(database, image_dir, work / "incremental", total,
                                    lambda f, m: progress(0.8 + 0.2 * f if mapper != "incremental" else f, m)))
    return choose(attempts), attempts


def remaining(database: Path, image_dir: Path, work: Path, names: list[str], attempts: list[Attempt],
              mapper: str, progress: Progress, refine_principal_point: bool = False) -> list[Attempt]:
    """When no model of `attempts` verified: the mappers of every image that have not run on this
    database and `mapper` allows, GLOMAP (on the self-calibration's focal lengths when it was
    sane, with the principal point refined as `reconstruct` would) then incremental mapping
    (COLMAP's own mapper). Returns the new attempts."""
    total = len(names)
    out: list[Attempt] = []
    whole = [a for a in attempts if a.images is None]
    if mapper != "incremental" and not any(a.mapper == "global" for a in attempts):
        cal = next((a for a in whole if a.mapper == "incremental" and a.model is not None
                    and a.check is not None and a.check.sane), None)
        exif = prior_cameras(database)
        try:
            has_priors = set_focal_priors(database, cal.model) if cal is not None else _all_priors(database)
            source = "prior" if _all_priors(database, exif) else "self_calibration"
            out.append(run_global(database, image_dir, work / "global", total, has_priors, progress,
                                  refine_principal_point=_refines_principal_point(refine_principal_point, total),
                                  focal_source=source))
        finally:
            release_focal_priors(database, exif)
    if not any(a.mapper == "incremental" for a in whole):
        out.append(run_incremental(database, image_dir, work / "incremental", total, progress))
    return out


def _refines_principal_point(asked: bool, total: int) -> bool:
    """The caller's judgement that the input shows the principal point, with enough images."""
    return asked and total >= REFINE_PRINCIPAL_MIN_IMAGES


def _all_priors(database: Path, among: set[int] | None = None) -> bool:
    """Every camera of the database has a focal prior (of `among`, when given: EXIF's)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        ids = {int(c.camera_id) for c in db.read_all_cameras()}
    finally:
        db.close()
    return ids <= (among if among is not None else prior_cameras(database))
