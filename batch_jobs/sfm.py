"""Stage `sfm`: cameras and a sparse model from the kept frames (pycolmap).

1. SIFT features (GPU when pycolmap has CUDA), one shared camera for a video or for photos of
   one size and one camera, else one per photo; EXIF focal lengths become priors.
2. Matching chosen by the input (`matcher: auto`): a photo set of up to
   `exhaustive_max_images` is matched exhaustively; a video (or a larger set, in name order)
   sequentially, with loop closure to spaced keyframes (see `sfm_pairs`).
3. GLOMAP global mapping (focal priors, or `calibrate_view_graph`), falling back to incremental
   mapping when the global model is not sane (see `sfm_mapping`); the largest model is kept.
4. Undistortion: `sfm/images/*.jpg` and the PINHOLE model `sfm/sparse/0/*.bin` matching them
   (same image names as `frames/images`), `sfm/transforms.json`, `sfm/points.ply`,
   `sfm/report.json` (registered / total, reprojection error, points, mapper, timings).

Too few registered images is bad input (TOO_FEW_REGISTERED, exit 3): the frames do not see
one scene with enough overlap.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from batch_jobs import sfm_export, sfm_features, sfm_mapping, sfm_pairs, storage
from batch_jobs.errors import StageError
from batch_jobs.runner import StageContext

VERSION = 1

TOO_FEW_REGISTERED = "TOO_FEW_REGISTERED"
BAD_FRAMES = "BAD_FRAMES"
MIN_REGISTERED = 3
REPORT_VERSION = 1

# Progress: the share of the stage each phase takes (roughly, on CPU).
PHASES = {"features": (0.0, 0.25), "matching": (0.25, 0.55), "mapping": (0.55, 0.9), "export": (0.9, 1.0)}


def _phase(ctx: StageContext, name: str) -> Any:
    lo, hi = PHASES[name]
    return lambda f, msg: ctx.progress.update(lo + (hi - lo) * max(0.0, min(1.0, f)), msg)


def read_frames(frames_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """Image names in capture order, and the frames report."""
    report_path = frames_dir / "report.json"
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
    matcher = params.get("matcher", "auto")
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
    database = work / "database.db"
    t_start = time.perf_counter()

    setup = camera_setup(names, frames_report, image_dir)
    long_side = max(max(image_size(image_dir / n)) for n in names)
    first_octave = sfm_features.sift_first_octave(long_side)
    with ctx.timed("features"):
        sfm_features.extract(database, image_dir, names, setup, int(params["max_num_features"]),
                             first_octave, _phase(ctx, "features"))
        priors = sfm_features.apply_focal_priors(database, setup)
    has_priors = priors > 0 and len(setup.focal_px) == len(names)

    with ctx.timed("matching"):
        matcher, pairs, loop = choose_pairs(names, kind, params, database)
        sfm_features.match_pairs(database, names, pairs, work, _phase(ctx, "matching"))
        verified = sfm_features.verified_pairs(database)
        loop_verified = sum(tuple(sorted((names[i], names[j]))) in verified for i, j in loop)

    with ctx.timed("mapping"):
        chosen, attempts = sfm_mapping.reconstruct(database, image_dir, work / "models", len(names),
                                                   params.get("mapper", "auto"), has_priors,
                                                   _phase(ctx, "mapping"),
                                                   refine_principal_point=setup.single and kind != "video")
    min_registered = max(MIN_REGISTERED, math.ceil(float(params["min_registered_fraction"]) * len(names)))
    report: dict[str, Any] = {
        "version": REPORT_VERSION, "total": len(names), "kind": kind, "matcher": matcher,
        "pairs": len(pairs), "verified_pairs": len(verified), "loop_pairs": len(loop),
        "loop_pairs_verified": loop_verified, "single_camera": setup.single,
        "focal_priors": len(setup.focal_px), "sift_first_octave": first_octave,
        "attempts": [a.to_dict() for a in attempts], "min_registered": min_registered,
    }
    registered = chosen.check.registered if chosen else 0
    if chosen is None or registered < min_registered:
        report.update({"registered": registered, "mapper": chosen.mapper if chosen else None,
                       "timings": dict(ctx.timings)})
        (ctx.out_dir / "report.json").write_text(json.dumps(report, indent=2))
        detail = "; ".join(f"{a.mapper}: {a.error or (a.check.to_dict() if a.check else '')}" for a in attempts)
        raise StageError(TOO_FEW_REGISTERED,
                         f"only {registered} of {len(names)} images registered (at least {min_registered} "
                         f"needed): the frames do not overlap enough to reconstruct one scene ({detail})")

    export = _phase(ctx, "export")
    with ctx.timed("export"):
        model = chosen.model
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

    registered_names = sorted(im.name for im in model.images.values() if im.has_pose)
    report.update({
        "mapper": chosen.mapper,
        "registered": registered,
        "registered_fraction": round(registered / len(names), 4),
        "unregistered": sorted(set(names) - set(registered_names)),
        "points": int(model.num_points3D()),
        "mean_reprojection_error": round(float(model.compute_mean_reprojection_error()), 4),
        "mean_track_length": round(float(model.compute_mean_track_length()), 3),
        "cameras": {int(cid): sfm_features.camera_summary(c) for cid, c in model.cameras.items()},
        "undistorted_cameras": {int(cid): sfm_features.camera_summary(c)
                                for cid, c in undistorted.cameras.items()},
        "timings": {**dict(ctx.timings), "total": round(time.perf_counter() - t_start, 3)},
        "device": "cuda" if pycolmap.has_cuda else "cpu",
    })
    storage.write_json(str(ctx.out_dir / "report.json"), report)
    return {"registered": registered, "total": len(names), "points": report["points"],
            "mapper": chosen.mapper, "matcher": matcher,
            "mean_reprojection_error": report["mean_reprojection_error"]}


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
