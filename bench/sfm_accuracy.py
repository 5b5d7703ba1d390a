"""SfM accuracy and speed against ground truth: the splatpipe stages vs plain pycolmap incremental.

For every dataset under `../shared/datasets/*` (images/ + cameras.json, see its README):

- ours: the real stages through the runner, `frames` then `sfm`, on the image folder (the
  preset's frame selection and resizing, then SIFT, matching, GLOMAP / fallback, undistortion
  and the outputs); time = both stages, wall clock;
- baseline: plain pycolmap with default options on the original images: `extract_features`,
  `match_exhaustive`, `incremental_mapping`, the largest model; time = those three calls.

Both are scored the same way (`batch_jobs.pose_accuracy`): camera centres aligned to the truth
by a similarity (Umeyama), then the RMSE and median of the centre errors (metres) and the mean
rotation error (degrees). Ratios are ours / baseline (lower is better for all of them).

    .venv/bin/python bench/sfm_accuracy.py [--preset standard] [--scenes fountain-P11,...]
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

from batch_jobs import pose_accuracy as pa  # noqa: E402
from batch_jobs.runner import run_stage  # noqa: E402

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
    errors = pa.pose_errors(pa.poses_from_model_dir(ws / "sfm" / "sparse" / "0"), pa.load_truth(scene / "cameras.json"))
    return {"seconds": seconds, "frames_seconds": res["frames"], "sfm_seconds": res["sfm"] - res["frames"],
            "registered": report["registered"], "total": len(pa.load_truth(scene / "cameras.json")),
            "mapper": report["mapper"], "points": report["points"], "errors": errors}


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
    truth = pa.load_truth(scene / "cameras.json")
    if not recs:
        return {"seconds": seconds, "registered": 0, "total": len(truth), "errors": None}
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    return {"seconds": seconds, "registered": rec.num_reg_images(), "total": len(truth),
            "points": rec.num_points3D(), "errors": pa.pose_errors(pa.poses_from_reconstruction(rec), truth)}


def _fmt(r: dict) -> str:
    if r.get("error"):
        return f"FAILED {r['error']['code']}: {r['error']['message'][:80]}"
    e = r["errors"]
    return (f"{r['registered']:>3}/{r['total']:<3} rmse {e.center_rmse:.4f} m  median {e.center_median:.4f} m  "
            f"rot {e.rotation_mean_deg:.3f} deg  {r['seconds']:6.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--scenes", default="", help="comma-separated folder names (default: all)")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    scenes = sorted(p for p in args.datasets.iterdir() if (p / "cameras.json").is_file())
    if args.scenes:
        wanted = set(args.scenes.split(","))
        scenes = [s for s in scenes if s.name in wanted]
    if not scenes:
        print(f"no datasets under {args.datasets}", file=sys.stderr)
        return 2
    rows, ok = [], True
    tot_ours = tot_base = 0.0
    with tempfile.TemporaryDirectory(prefix="sfm-bench-") as tmp:
        for scene in scenes:
            # Baseline first, ours second, scene by scene: both see the same machine load.
            base = run_baseline(scene, Path(tmp) / scene.name / "baseline")
            ours = run_ours(scene, Path(tmp) / scene.name / "ours", args.preset)
            print(f"{scene.name}")
            print(f"  splatpipe ({args.preset}): {_fmt(ours)}"
                  + ("" if ours.get("error") else f"  [frames {ours['frames_seconds']:.1f} s + sfm "
                                                  f"{ours['sfm_seconds']:.1f} s, {ours['mapper']}]"))
            print(f"  pycolmap incremental:    {_fmt(base)}")
            if ours.get("error") or base["errors"] is None:
                ok = False
                continue
            r_rmse = ours["errors"].center_rmse / base["errors"].center_rmse
            r_time = ours["seconds"] / base["seconds"]
            print(f"  ratio ours/baseline: rmse {r_rmse:.2f}  median "
                  f"{ours['errors'].center_median / base['errors'].center_median:.2f}  rotation "
                  f"{ours['errors'].rotation_mean_deg / base['errors'].rotation_mean_deg:.2f}  time {r_time:.2f}")
            ok &= ours["registered"] == ours["total"] and r_rmse <= 1.0
            tot_ours += ours["seconds"]
            tot_base += base["seconds"]
            rows.append({"scene": scene.name, "ours": {**{k: v for k, v in ours.items() if k != "errors"},
                                                      **ours["errors"].summary()},
                         "baseline": {**{k: v for k, v in base.items() if k != "errors"}, **base["errors"].summary()}})
    if tot_base:
        print(f"total time: splatpipe {tot_ours:.1f} s, pycolmap incremental {tot_base:.1f} s, "
              f"ratio {tot_ours / tot_base:.2f} (goal <= 0.60)")
        ok &= tot_ours / tot_base <= 0.6
    print("goals met" if ok else "goals NOT met")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "total_ours_s": tot_ours, "total_baseline_s": tot_base},
                                        indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
