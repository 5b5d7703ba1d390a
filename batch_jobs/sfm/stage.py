"""Stage `sfm`: cameras and a sparse model from the kept frames (pycolmap).

1. SIFT features (GPU when pycolmap has CUDA and a device is there), one shared camera for a
   video or for photos of one size and one camera, else one per photo; EXIF focal lengths
   become priors.
2. Matching chosen by the input (`matcher: auto`): a photo set of up to
   `exhaustive_max_images` is matched exhaustively; a video (or a larger set, in name order)
   sequentially, with loop closure to spaced keyframes (see `sfm_pairs`).
3. Mapping (see `sfm_mapping`): with EXIF focal lengths, GLOMAP global mapping, falling back
   to incremental mapping when the global model is not sane. Without, self-calibration by
   incremental mapping; when it maps every image sanely its model (principal point refined for
   a one-camera photo set the photos show it in) is the candidate, else GLOMAP on its focal
   lengths. The largest sane model is kept.
4. Verification against the evidence (`sfm_verify`): every verified image pair's inlier matches
   against the epipolar geometry of the model's two cameras. A model that fails is not
   published, nor one of too few images. A solve whose models all fail verification runs the
   mappers it has not run yet on the same matches (GLOMAP, then incremental mapping:
   `sfm_mapping.remaining`), then the stage retries, cheapest first: plain COLMAP's own features
   and matching (a fresh database, its default SIFT, every pair matched; mapped as above, and
   incrementally as COLMAP does when nothing else verifies: so a failure here is one COLMAP
   would very likely share, its focal lengths only seeded by our self-calibration), then
   doubled features. When no model of every photo verifies, a verified model of
   the photos the evidence does not contradict is published (`partial`, at least
   `min_registered_fraction` of them) with a `sfm_partial` warning naming the photos left out
   and why. Only when nothing usable is left does the stage fail `sfm_unreliable` (exit 3),
   naming the cameras the evidence contradicts, the figures, and what to capture differently.
5. Undistortion: `sfm/images/*.jpg` and the PINHOLE model `sfm/sparse/0/*.bin` matching them
   (same image names as `frames/images`), `sfm/transforms.json`, `sfm/points.ply`,
   `sfm/report.json` (registered / total, reprojection error, points, mapper, verification,
   every solve tried, timings).

Too few registered images after every retry is bad input (TOO_FEW_REGISTERED, exit 3): the
frames do not see one scene with enough overlap.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from batch_jobs.errors import StageError
from batch_jobs.runner import StageContext
from batch_jobs.sfm import export as sfm_export
from batch_jobs.sfm import features as sfm_features
from batch_jobs.sfm import mapping as sfm_mapping
from batch_jobs.sfm import pairs as sfm_pairs
from batch_jobs.sfm import verify as sfm_verify
from core.stages import REPORT_FILE

VERSION = 1

TOO_FEW_REGISTERED = "TOO_FEW_REGISTERED"
BAD_FRAMES = "BAD_FRAMES"
SFM_UNRELIABLE = "sfm_unreliable"  # every model made failed verification (sfm_verify)
MIN_REGISTERED = 3
REPORT_VERSION = 1

# Progress: the share of the stage each phase takes (roughly, on CPU).
PHASES = {"features": (0.0, 0.25), "matching": (0.25, 0.55), "mapping": (0.55, 0.85), "verify": (0.85, 0.9),
          "export": (0.9, 1.0)}
# Retries when verification fails: features doubled (at least RETRY_MIN_FEATURES, at most
# MAX_RETRY_FEATURES), finer scales for frames that are not large, every pair matched up to
# RETRY_EXHAUSTIVE_FACTOR times the preset's exhaustive limit.
RETRY_MIN_FEATURES = 8192
MAX_RETRY_FEATURES = 16384
RETRY_EXHAUSTIVE_FACTOR = 2
RETRY_UPSAMPLE_BELOW = 1600  # long side under which the retry's SIFT starts on the 2x upsampled image
COLMAP_FIRST_OCTAVE = -1  # COLMAP's default SIFT starts on the 2x upsampled image
SFM_PARTIAL = "sfm_partial"  # a warning: the published model leaves photos out
# What the user can change when no camera solution can be trusted (the error's last sentence).
CAPTURE_ADVICE = ("To capture it again: walk around the subject rather than turning on the spot, let "
                  "neighbouring photos overlap by well over half, keep the scene still and in focus, and "
                  "avoid plain, shiny or repeating surfaces filling the frame.")
# The verification figures that become the stage's metrics (the rest stay in report.json).
METRIC_FIGURES = frozenset(f"verify_{k}" for k in (
    "passed", "pairs_judged", "pairs_disagreeing", "disagree_fraction", "rotation_error_median_deg",
    "rotation_error_p95_deg", "suspect_images", "min_image_observations", "explained_median",
    "track_length_mean", "reprojection_error_p95_px", "image_rotation_error_max_deg"))


def _phase(ctx: StageContext, name: str) -> Any:
    lo, hi = PHASES[name]
    return lambda f, msg: ctx.progress.update(lo + (hi - lo) * max(0.0, min(1.0, f)), msg)


def read_frames(frames_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """Image names in capture order, and the frames report."""
    report_path = frames_dir / REPORT_FILE
    images_dir = frames_dir / "images"
    if not images_dir.is_dir():
        raise StageError(BAD_FRAMES, "frames/images is missing: run the frames stage first")
    on_disk = {p.name for p in images_dir.iterdir() if p.suffix.lower() == ".jpg"}
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    names = [n for n in report.get("images", []) if n in on_disk]
    names += sorted(on_disk - set(names))  # images the report does not list come last, by name
    if len(names) < MIN_REGISTERED:
        raise StageError(BAD_FRAMES, f"frames/images holds {len(names)} images; SfM needs at least "
                                     f"{MIN_REGISTERED}")
    return names, report


def camera_setup(names: list[str], report: dict[str, Any], image_dir: Path) -> sfm_features.CameraSetup:
    """One shared camera for a video, or for photos of one size from one camera; focal priors."""
    by_name = {f"{f['name']}.jpg": f for f in report.get("frames", []) if f.get("kept") and f.get("name")}
    focal = {n: float(by_name[n]["focal_px"]) for n in names if by_name.get(n, {}).get("focal_px")}
    sizes = {image_size(image_dir / n) for n in names}
    source = report.get("source", {})
    video = source.get("kind") == "video"
    one_camera = len(source.get("cameras", [])) <= 1
    same_focal = len({round(v, 1) for v in focal.values()}) <= 1
    single = len(sizes) == 1 and (video or (one_camera and same_focal))
    return sfm_features.CameraSetup(single=single, focal_px=focal)


def choose_pairs(names: list[str], kind: str, params: dict[str, Any],
                 database: Path) -> tuple[str, list[sfm_pairs.Pair], set[sfm_pairs.Pair]]:
    """(matcher used, pairs of indices into `names`, the loop-closure pairs among them)."""
    n = len(names)
    matcher = params["matcher"]
    if matcher == "auto":
        matcher = "exhaustive" if kind != "video" and n <= int(params["exhaustive_max_images"]) else "sequential"
    if matcher == "exhaustive":
        return matcher, sfm_pairs.exhaustive_pairs(n), set()
    overlap = int(params["sequential_overlap"])
    pairs = set(sfm_pairs.sequential_pairs(n, overlap))
    keys = sfm_pairs.keyframes(n, int(params["loop_stride"]))
    similarity = None
    if len(keys) > sfm_pairs.EXHAUSTIVE_KEYFRAMES:  # many keyframes: retrieval picks the partners
        descs = sfm_features.descriptors(database, [names[k] for k in keys])
        similarity = sfm_pairs.similarity_matrix(descs)
    loop = set(sfm_pairs.loop_pairs(keys, overlap, similarity)) - pairs
    return "sequential+loop", sorted(pairs | loop), loop


@dataclass
class Solve:
    """One way of solving the cameras: its features, matching and mapper, and what it made."""

    name: str  # "preset", "colmap", "more_features", "partial"
    max_num_features: int
    first_octave: int
    matcher: str  # the matcher parameter (`auto`, `exhaustive`, `sequential`)
    mapper: str
    database: Path | None = None
    matcher_used: str = ""
    pairs: int = 0
    verified_pairs: int = 0
    loop_pairs: int = 0
    loop_pairs_verified: int = 0
    seconds: float = 0.0
    priors: int = 0  # cameras given a focal-length prior
    attempts: list[sfm_mapping.Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "max_num_features": self.max_num_features, "sift_first_octave": self.first_octave,
                "matcher": self.matcher_used, "pairs": self.pairs, "verified_pairs": self.verified_pairs,
                "mapper": self.mapper, "seconds": round(self.seconds, 3),
                "attempts": [a.to_dict() for a in self.attempts]}


def colmap_max_num_features() -> int:
    """COLMAP's default SIFT feature count (pycolmap's own default, not a copy of it)."""
    import pycolmap

    return int(pycolmap.FeatureExtractionOptions().sift.max_num_features)


def retries(first: Solve, n_images: int, long_side: int, params: dict[str, Any]) -> list[Solve]:
    """What to try, cheapest first, when the preset's solution fails verification or registers
    too few images: plain COLMAP's configuration (its default SIFT on a fresh database, every pair
    matched where affordable), when it differs from the preset's; more and finer features. Each
    is mapped like the preset (`sfm_mapping.reconstruct`: with EXIF, GLOMAP first; measured on
    `lund`, a forward walk: COLMAP's features registered 2 of 29 photos incrementally and all 29
    globally, in 4 s of a 55 s solve), then by the mappers not run yet when nothing verifies
    (`sfm_mapping.remaining`, in `run`), incremental mapping among them."""
    exhaustive_ok = n_images <= RETRY_EXHAUSTIVE_FACTOR * int(params["exhaustive_max_images"])
    matcher = "exhaustive" if exhaustive_ok else first.matcher
    out = []
    colmap = Solve("colmap", colmap_max_num_features(), COLMAP_FIRST_OCTAVE, matcher, "auto")
    same_features = (first.max_num_features, first.first_octave) == (colmap.max_num_features, colmap.first_octave)
    same_pairs = first.matcher_used == "exhaustive" or not exhaustive_ok
    if not (same_features and same_pairs):
        out.append(colmap)
    octave = -1 if long_side < RETRY_UPSAMPLE_BELOW else first.first_octave
    out.append(Solve("more_features", min(MAX_RETRY_FEATURES, max(RETRY_MIN_FEATURES, 2 * first.max_num_features)),
                     octave, matcher, "auto"))
    return out


def left_out(verification: sfm_verify.Verification) -> dict[str, str]:
    """The registered photos a failed verification names, with why: contradicted by most of
    their image pairs, or too little support to be judged."""
    th = verification.thresholds
    out = {n: "contradicted by most of its image pairs" for n in verification.suspect_images}
    for n, d in verification.per_image.items():
        if n not in out and (d["judged"] == 0 or d["observations"] < th.min_image_observations):
            out[n] = "too little overlap with the other photos to be checked"
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    import pycolmap

    pycolmap.logging.minloglevel = 2
    params = ctx.params
    frames_dir = ctx.input_dir("frames")
    image_dir = frames_dir / "images"
    names, frames_report = read_frames(frames_dir)
    kind = frames_report.get("source", {}).get("kind", "images")
    work = ctx.work_root / "sfm"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    setup = camera_setup(names, frames_report, image_dir)
    long_side = max(max(image_size(image_dir / n)) for n in names)
    refine_pp = setup.single and kind != "video"
    min_registered = max(MIN_REGISTERED, math.ceil(float(params["min_registered_fraction"]) * len(names)))

    def attempt(solve: Solve, k: int, first: bool) -> tuple[sfm_mapping.Attempt, sfm_verify.Verification] | None:
        """Run one solve; returns the first of its models that registers enough and verifies."""
        t0 = time.perf_counter()
        if solve.database is None:
            solve.database = work / f"database-{k}.db"
            with ctx.timed("features" if first else f"retry_{k}_features"):
                sfm_features.extract(solve.database, image_dir, names, setup, solve.max_num_features,
                                     solve.first_octave, _phase(ctx, "features") if first else _quiet)
                priors = sfm_features.apply_focal_priors(solve.database, setup)
            with ctx.timed("matching" if first else f"retry_{k}_matching"):
                matcher, pairs, loop = choose_pairs(names, kind, {**params, "matcher": solve.matcher}, solve.database)
                sfm_features.match_pairs(solve.database, names, pairs, work,
                                         _phase(ctx, "matching") if first else _quiet)
                verified = sfm_features.verified_pairs(solve.database)
            solve.matcher_used, solve.pairs, solve.verified_pairs = matcher, len(pairs), len(verified)
            solve.loop_pairs = len(loop)
            solve.loop_pairs_verified = sum(tuple(sorted((names[i], names[j]))) in verified for i, j in loop)
            solve.priors = priors
        database = solve.database
        has_priors = solve.priors > 0 and len(setup.focal_px) == len(names)
        progress = _phase(ctx, "mapping") if first else (lambda f, m: ctx.progress.update(
            PHASES["verify"][0], f"retry ({solve.name}): {m}"))
        with ctx.timed("mapping" if first else f"retry_{k}_mapping"):
            # Sequential matching pairs only near neighbours: the self-calibration's images stay that close.
            spacing = None if solve.matcher_used == "exhaustive" else int(params["sequential_overlap"])
            _, solve.attempts = sfm_mapping.reconstruct(database, image_dir, work / f"models-{k}", names,
                                                        solve.mapper, has_priors, progress,
                                                        refine_principal_point=refine_pp, max_spacing=spacing)
        with ctx.timed("verify" if first else f"retry_{k}_verify"):
            found = first_verified(solve.attempts, database)
        if found is None:  # the mappers that have not run yet, on the same matches
            with ctx.timed("mapping_more" if first else f"retry_{k}_mapping_more"):
                more = sfm_mapping.remaining(database, image_dir, work / f"models-{k}", names, solve.attempts,
                                             solve.mapper, lambda f, m: ctx.progress.update(
                                                 PHASES["verify"][0], f"the model did not verify; {m}"),
                                             refine_principal_point=refine_pp)
            solve.attempts.extend(more)
            with ctx.timed("verify_more" if first else f"retry_{k}_verify_more"):
                found = first_verified(more, database)
        solve.seconds = time.perf_counter() - t0
        return found

    def first_verified(attempts: list[sfm_mapping.Attempt],
                       database: Path) -> tuple[sfm_mapping.Attempt, sfm_verify.Verification] | None:
        """Verify the models of every image (not a self-calibration subset) that register enough,
        in sfm_mapping's preference; the first that passes."""
        made = sorted((a for a in attempts if a.model is not None and a.check is not None and a.images is None
                       and a.check.registered >= min_registered), key=sfm_mapping.preference)
        for a in made:
            ctx.progress.update(PHASES["verify"][0], f"verifying the {a.mapper} model against its image pairs")
            a.verification = sfm_verify.verify(database, a.model)
            if a.verification.passed:
                return a, a.verification
        return None

    first = Solve("preset", int(params["max_num_features"]), sfm_features.sift_first_octave(long_side),
                  params["matcher"], params["mapper"])
    solves = [first]
    found = attempt(first, 0, True)
    if found is None:  # contradicted, or too few images registered: both may be the preset's features
        why = ("did not verify" if any(a.verification is not None for a in first.attempts)
               else "registered too few images")
        for k, solve in enumerate(retries(first, len(names), long_side, params), start=1):
            solves.append(solve)
            ctx.progress.update(PHASES["verify"][0], f"the camera solution {why}; retrying ({solve.name})")
            found = attempt(solve, k, False)
            if found is not None:
                break
    dropped: dict[str, str] = {}
    if found is None:
        found, dropped = partial_solve(solves, names, image_dir, work, min_registered, ctx)

    report: dict[str, Any] = {
        "version": REPORT_VERSION, "total": len(names), "kind": kind, "matcher": first.matcher_used,
        "pairs": first.pairs, "verified_pairs": first.verified_pairs, "loop_pairs": first.loop_pairs,
        "loop_pairs_verified": first.loop_pairs_verified, "single_camera": setup.single,
        "focal_priors": len(setup.focal_px), "sift_first_octave": first.first_octave,
        "attempts": [a.to_dict() for a in first.attempts], "min_registered": min_registered,
        "solves": [s.to_dict() for s in solves],
    }
    if found is None:
        _fail(ctx, report, solves, names, min_registered)
    chosen, verification = found
    solve = next(s for s in solves if chosen in s.attempts)

    model, check = chosen.model, chosen.check
    assert model is not None and check is not None  # a verified attempt made a checked model
    export = _phase(ctx, "export")
    with ctx.timed("export"):
        distorted_dir = work / "distorted"
        distorted_dir.mkdir(parents=True, exist_ok=True)
        model.write_binary(str(distorted_dir))
        export(0.0, "undistorting images")
        undistorted = sfm_export.undistort(distorted_dir, image_dir, work / "undistort",
                                           ctx.out_dir / "images", ctx.out_dir / "sparse" / "0")
        export(0.8, "writing transforms.json and points.ply")
        sfm_export.write_transforms(undistorted, ctx.out_dir / "transforms.json")
        xyz, rgb = sfm_export.points_arrays(undistorted)
        sfm_export.write_ply(ctx.out_dir / "points.ply", xyz, rgb)

    registered = check.registered
    registered_names = sorted(im.name for im in model.images.values() if im.has_pose)
    unregistered = sorted(set(names) - set(registered_names))
    dropped.update({n: "could not be placed in the camera solution" for n in unregistered if n not in dropped})
    if dropped:
        what = "frames" if kind == "video" else "photos"
        ctx.warn(SFM_PARTIAL, f"{len(dropped)} of {len(names)} {what} were left out of the camera solution: "
                 + "; ".join(f"{n} ({why})" for n, why in sorted(dropped.items())))
    report.update({
        "mapper": chosen.mapper,
        "solve": solve.name,
        "matcher": solve.matcher_used,
        "max_num_features": solve.max_num_features,
        "registered": registered,
        "registered_fraction": round(registered / len(names), 4),
        "unregistered": unregistered,
        "dropped": dict(sorted(dropped.items())),
        "points": int(model.num_points3D()),
        "mean_reprojection_error": round(float(model.compute_mean_reprojection_error()), 4),
        "mean_track_length": round(float(model.compute_mean_track_length()), 3),
        "verification": verification.to_dict(),
        "cameras": {int(cid): sfm_features.camera_summary(c) for cid, c in model.cameras.items()},
        "undistorted_cameras": {int(cid): sfm_features.camera_summary(c)
                                for cid, c in undistorted.cameras.items()},
        "timings": {**dict(ctx.timings), "total": round(time.perf_counter() - t_start, 3)},
        "device": sfm_features.device_name(),
    })
    ctx.write_report(report)
    return {"registered": registered, "total": len(names), "points": report["points"],
            "mapper": chosen.mapper, "matcher": solve.matcher_used, "solve": solve.name,
            "mean_reprojection_error": report["mean_reprojection_error"],
            "registered_images": registered, "registered_fraction": report["registered_fraction"],
            "mean_reprojection_error_px": report["mean_reprojection_error"],
            **{k: v for k, v in verification.metrics().items() if k in METRIC_FIGURES}}


def partial_solve(solves: list[Solve], names: list[str], image_dir: Path, work: Path, min_registered: int,
                  ctx: StageContext) -> tuple[tuple[sfm_mapping.Attempt, sfm_verify.Verification] | None,
                                              dict[str, str]]:
    """When no model of every photo verifies: incremental mapping of the photos that the model
    the evidence contradicts least does not have contradicted, on that model's matches, verified
    like any other. Appends its Solve to `solves`; returns (its attempt and verification, the
    photos left out with why), or (None, {}) when it is not enough."""
    tried = [(s, a.verification, a.model) for s in solves for a in s.attempts
             if a.verification is not None and a.model is not None]
    if not tried:
        return None, {}
    source, least, least_model = min(tried, key=lambda svm: (svm[1].figures["disagree_fraction"],
                                                             len(svm[1].suspect_images)))
    drop = left_out(least)
    placed = {im.name for im in least_model.images.values() if im.has_pose}
    keep = [n for n in names if n in placed and n not in drop]
    if not drop or len(keep) < min_registered:
        return None, {}
    database = source.database
    assert database is not None  # the solve made a model from it
    solve = Solve("partial", source.max_num_features, source.first_octave, source.matcher, "incremental",
                  database=database, matcher_used=source.matcher_used, pairs=source.pairs,
                  verified_pairs=source.verified_pairs)
    solves.append(solve)
    t0 = time.perf_counter()
    ctx.progress.update(PHASES["verify"][0], f"mapping the {len(keep)} of {len(names)} photos the image pairs "
                                             "do not contradict")
    with ctx.timed("partial_mapping"):
        a = sfm_mapping.run_incremental(database, image_dir, work / "models-partial", len(names), _quiet,
                                        keep)
    solve.attempts = [a]
    if a.model is not None and a.check is not None and a.check.registered >= min_registered:
        with ctx.timed("partial_verify"):
            a.verification = sfm_verify.verify(database, a.model)
    solve.seconds = time.perf_counter() - t0
    if a.verification is None or not a.verification.passed:
        return None, {}
    return (a, a.verification), drop


def _quiet(fraction: float, message: str) -> None:
    """Progress of a retry's features and matching: the stage's bar stays where it is."""


def _fail(ctx: StageContext, report: dict[str, Any], solves: list[Solve], names: list[str],
          min_registered: int) -> NoReturn:
    """Write the report and raise: too few images registered, or no model that verifies."""
    made = [(a, a.check) for s in solves for a in s.attempts if a.model is not None and a.check is not None]
    best_registered = max((check.registered for _, check in made), default=0)
    verified = [(a, check, a.verification) for a, check in made if a.verification is not None]
    report.update({"registered": best_registered, "mapper": None, "timings": dict(ctx.timings)})
    if not verified:
        report["error"] = TOO_FEW_REGISTERED
        ctx.write_report(report, failed=True)  # the figures that explain the error
        detail = "; ".join(f"{a.mapper}: {a.error or (a.check.to_dict() if a.check else '')}"
                           for s in solves for a in s.attempts)
        raise StageError(TOO_FEW_REGISTERED,
                         f"only {best_registered} of {len(names)} images registered (at least {min_registered} "
                         f"needed): the frames do not overlap enough to reconstruct one scene. {CAPTURE_ADVICE} "
                         f"({detail})")
    # The model the evidence contradicts least, to name its cameras and figures.
    a, check, v = min(verified, key=lambda acv: (acv[2].figures["disagree_fraction"], len(acv[2].suspect_images)))
    report.update({"error": SFM_UNRELIABLE, "verification": v.to_dict()})
    ctx.write_report(report, failed=True)
    tried = ", ".join(f"{s.name} ({'/'.join(x.mapper for x in s.attempts)})" for s in solves)
    raise StageError(SFM_UNRELIABLE,
                     f"no camera solution passed verification (tried: {tried}); the best, {a.mapper} with "
                     f"{check.registered} of {len(names)} images: {'; '.join(v.problems)}; {v.summary()}. "
                     f"{CAPTURE_ADVICE}")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
