"""SfM accuracy and speed: the splatpipe stages at each preset vs plain pycolmap incremental.

For every dataset under `../shared/datasets/*` (images/, with or without cameras.json, see its
README), in one run, scene by scene:

- baseline: plain pycolmap with default options on the original images: `extract_features`,
  `match_exhaustive`, `incremental_mapping`, the largest model; time = those three calls;
- ours, once per preset (`--presets`, default preview and standard): the real stages through
  the runner, `frames` then `sfm`, on the image folder (the preset's frame selection and
  resizing, then SIFT, matching, self-calibration, GLOMAP / fallback, verification, retries,
  undistortion and the outputs); time = both stages, wall clock, also shown per stage.

With ground truth (cameras.json), both are scored the same way (`tests/batch_jobs/pose_accuracy.py`):
camera centres aligned to the truth by a similarity (Umeyama), then the RMSE and median of the
centre errors (metres; and as a percentage of the rig's radius, for reference poses without
units such as `fox`) and the mean rotation error (degrees); ratios are ours / baseline (lower
is better). Without it, ours is compared with the baseline's camera centres (the same alignment;
the RMSE as a percentage of the cameras' spread). The verification figures are shown for all.

Goals: every kept image registered and verified; on the ground-truth sets each preset's centre RMSE
<= the baseline's; each preset's total time <= 0.6 x the baseline's.

    .venv/bin/python bench/sfm_accuracy.py [--presets preview,standard] [--scenes fountain-P11,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/, whose queue.py would shadow the standard library's: use the repo.
sys.path[0] = str(REPO)
os.environ.setdefault("SPLATPIPE_STATUS_STORE", "log")

import numpy as np  # noqa: E402

from batch_jobs.runner import run_stage  # noqa: E402
from tests.batch_jobs import pose_accuracy as pa  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"


def run_ours(scene: Path, work: Path, preset: str) -> dict:
    ws = work / "ws"
    ws.mkdir(parents=True)
    (ws / "request.json").write_text(json.dumps({"request_id": f"bench-{scene.name}",
                                                 "input": str(scene / "images"),
                                                 "options": {"preset": preset}}))
    t0 = time.perf_counter()
    res = {}
    for stage in ("frames", "sfm"):
        r = run_stage(stage, str(ws), force=True)
        res[stage] = time.perf_counter() - t0
        if r.exit_code:
            return {"error": r.error, "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    report = json.loads((ws / "sfm" / "report.json").read_text())
    kept = len(json.loads((ws / "frames" / "report.json").read_text())["images"])
    poses = pa.poses_from_model_dir(ws / "sfm" / "sparse" / "0")
    truth = scene / "cameras.json"
    return {"seconds": seconds, "frames_seconds": res["frames"], "sfm_seconds": res["sfm"] - res["frames"],
            "registered": report["registered"], "total": len(list((scene / "images").iterdir())), "kept": kept,
            "mapper": report["mapper"], "solve": report["solve"], "points": report["points"],
            "long_side": max(report["cameras"]["1"]["width"], report["cameras"]["1"]["height"]),
            "verification": report["verification"], "poses": poses, "dropped": report.get("dropped", {}),
            "rig_radius": pa.rig_radius(pa.load_truth(truth)) if truth.is_file() else None,
            "errors": pa.pose_errors(poses, pa.load_truth(truth)) if truth.is_file() else None}


def run_baseline(scene: Path, work: Path) -> dict:
    import pycolmap

    pycolmap.logging.minloglevel = 2
    work.mkdir(parents=True)
    db = work / "database.db"
    t0 = time.perf_counter()
    pycolmap.extract_features(str(db), str(scene / "images"))
    pycolmap.match_exhaustive(str(db))
    recs = pycolmap.incremental_mapping(str(db), str(scene / "images"), str(work / "sparse"))
    seconds = time.perf_counter() - t0
    total = len(list((scene / "images").iterdir()))
    if not recs:
        return {"seconds": seconds, "registered": 0, "total": total, "errors": None, "poses": {}}
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    poses = pa.poses_from_reconstruction(rec)
    truth = scene / "cameras.json"
    return {"seconds": seconds, "registered": rec.num_reg_images(), "total": total, "points": rec.num_points3D(),
            "poses": poses, "rig_radius": pa.rig_radius(pa.load_truth(truth)) if truth.is_file() else None,
            "errors": pa.pose_errors(poses, pa.load_truth(truth)) if truth.is_file() else None}


def agreement(ours: dict, base: dict) -> str:
    """Ours against the baseline's camera centres, for sets without ground truth (not rotations:
    pycolmap reads phone photos unrotated, ours are EXIF-upright)."""
    e = pa.pose_errors(ours["poses"], base["poses"])
    centers = [p.center for p in base["poses"].values()]
    spread = float(np.sqrt(np.mean(np.sum((np.array(centers) - np.mean(centers, axis=0)) ** 2, axis=1))))
    return f"vs pycolmap incremental: centre rmse {100 * e.center_rmse / spread:.2f} % of the camera spread"


def _fmt(r: dict) -> str:
    if r.get("error"):
        return f"FAILED {r['error']['code']}: {r['error']['message'][:120]}"
    e = r["errors"]
    acc = (f"rmse {e.center_rmse:.4f} m ({100 * e.center_rmse / r['rig_radius']:.2f} % of the rig radius)  "
           f"median {e.center_median:.4f} m  rot {e.rotation_mean_deg:.3f} deg  " if e is not None else "")
    return f"{r['registered']:>3}/{r['total']:<3} {acc}{r['seconds']:6.1f} s"


def _verification(r: dict) -> str:
    v = r["verification"]
    f = v["figures"]
    return (f"verification {'passed' if v['passed'] else 'FAILED'}: {f['pairs_disagreeing']}/{f['pairs_judged']} "
            f"pairs disagree ({100 * f['disagree_fraction']:.1f} % of their matches), pair rotation median "
            f"{f['rotation_error_median_deg']:.3f} / p95 "
            f"{f['rotation_error_p95_deg']:.2f} deg, worst camera {f['image_rotation_error_max_deg']:.2f} deg, "
            f"{f['min_image_observations']} obs min")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--scenes", default="", help="comma-separated folder names (default: all)")
    ap.add_argument("--presets", default="preview,standard")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    presets = args.presets.split(",")
    scenes = sorted(p for p in args.datasets.iterdir() if (p / "images").is_dir())
    if args.scenes:
        wanted = set(args.scenes.split(","))
        scenes = [s for s in scenes if s.name in wanted]
    if not scenes:
        print(f"no datasets under {args.datasets}", file=sys.stderr)
        return 2
    rows, ok = [], True
    tot_base = 0.0
    tot_ours = dict.fromkeys(presets, 0.0)
    with tempfile.TemporaryDirectory(prefix="sfm-bench-") as tmp:
        for scene in scenes:
            # Baseline first, ours second, scene by scene: all see the same machine load.
            base = run_baseline(scene, Path(tmp) / scene.name / "baseline")
            print(f"{scene.name}")
            print(f"  {'pycolmap incremental:':<24}{_fmt(base)}")
            tot_base += base["seconds"]
            row: dict = {"scene": scene.name, "baseline": _row(base)}
            for preset in presets:
                ours = run_ours(scene, Path(tmp) / scene.name / preset, preset)
                print(f"  {'splatpipe ' + preset + ':':<24}{_fmt(ours)}"
                      + ("" if ours.get("error") else f"  [frames {ours['frames_seconds']:.1f} s + sfm "
                                                      f"{ours['sfm_seconds']:.1f} s, {ours['long_side']} px, "
                                                      f"{ours['mapper']}, solve {ours['solve']}]"))
                tot_ours[preset] += ours["seconds"]
                if ours.get("error") or not base["registered"]:
                    ok = False
                    continue
                print(f"    {_verification(ours)}")
                # Every photo the preset keeps (preview keeps at most 40, evenly chosen).
                ok &= ours["registered"] == ours["kept"] and ours["verification"]["passed"]
                r_time = ours["seconds"] / base["seconds"]
                if ours["errors"] is not None and base["errors"] is not None:
                    r_rmse = ours["errors"].center_rmse / base["errors"].center_rmse
                    print(f"    ratio {preset}/baseline: rmse {r_rmse:.2f}  median "
                          f"{ours['errors'].center_median / base['errors'].center_median:.2f}  rotation "
                          f"{ours['errors'].rotation_mean_deg / base['errors'].rotation_mean_deg:.2f}  "
                          f"time {r_time:.2f}")
                    ok &= r_rmse <= 1.0
                else:
                    print(f"    {agreement(ours, base)}; ratio {preset}/baseline: time {r_time:.2f}")
                row[preset] = _row(ours)
            rows.append(row)
    for preset in presets:
        if tot_base:
            print(f"total time: splatpipe {preset} {tot_ours[preset]:.1f} s, pycolmap incremental {tot_base:.1f} s, "
                  f"ratio {tot_ours[preset] / tot_base:.2f} (goal <= 0.60)")
            ok &= tot_ours[preset] / tot_base <= 0.6
    print("goals met" if ok else "goals NOT met")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "total_ours_s": tot_ours, "total_baseline_s": tot_base},
                                        indent=1, default=str))
    return 0 if ok else 1


def _row(r: dict) -> dict:
    out = {k: v for k, v in r.items() if k not in ("errors", "poses", "verification")}
    if r.get("errors") is not None:
        out.update(r["errors"].summary())
    if r.get("verification"):
        out["verification"] = r["verification"]["figures"]
    return out


if __name__ == "__main__":
    sys.exit(main())
