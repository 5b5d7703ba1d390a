"""Peer bench: our splat stage against OpenSplat on the same SfM model, images and held-out views.

For each real capture under `../shared/datasets/*` (`--scenes`, default `fox`), in one run:

1. our `frames` and `sfm` stages at the preset (once; `--reuse-sfm` keeps an earlier run's
   workspace) give the undistorted PINHOLE model `sfm/sparse/0` and images `sfm/images/`;
2. ours: the `splat` stage through the runner at the preset (`--steps` overrides its steps,
   `--long-side` its working size: the larger budget, e.g. `--steps 3000 --long-side 640`; the
   size is set in this process's stage registry, as no request option sets it);
   wall = the stage (load, training, evaluation, export);
3. OpenSplat (built by `bench/peers/build_opensplat.sh`, CPU): a COLMAP project written from
   the same model with only the training views, each image already at our working size (the
   same INTER_AREA resize our stage does, stored as PNG so both train on the same pixels) and
   its PINHOLE camera scaled to match; all SfM points as the initial cloud, as ours. Run with
   the same steps, `--num-downscales 0` (full working size from the first step),
   `--warmup-length 100 --refine-every 50` (its defaults, 500 / 100, would leave few
   densification rounds in 1000 steps) and `--keep-crs` (the PLY in the SfM frame); otherwise
   its default recipe. Wall = the process.
4. One evaluator for both: each PLY is read with our reader and rendered with our renderer on
   the held-out views (every 8th by name, `batch_jobs.splat.stage.HOLDOUT_EVERY`), at the same
   resolution against the same photos (`batch_jobs.gaussians.evaluate`: PSNR and SSIM per view
   and mean). Background: ours its trained direction map (the report's `background`), OpenSplat its fixed
   training background (model.hpp, the Nerfstudio default 0.613, 0.0101, 0.3984).

Prints per view and per capture: PSNR, SSIM, wall, Gaussians, and the ratios against OpenSplat
in the same run; writes `<work>/results-<capture>[-<steps>x<long side>].json`.

    flock /tmp/splatpipe-heavy.lock .venv/bin/python bench/splat_peer.py [--scenes fox,kermit]
        [--preset preview] [--steps N] [--long-side PX] [--work .cache/splat_peer] [--reuse-sfm]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/, whose queue.py would shadow the standard library's: use the repo.
sys.path[0] = str(REPO)
from batch_jobs import cpu_malloc  # noqa: E402

cpu_malloc.reexec_unless_set()  # ours in this process, OpenSplat as its child: both under the same settings
os.environ.setdefault("SPLATPIPE_STATUS_STORE", "log")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from batch_jobs.gaussians import losses  # noqa: E402
from batch_jobs.gaussians.background import Background  # noqa: E402
from batch_jobs.gaussians.camera import View, load_views  # noqa: E402
from batch_jobs.gaussians.evaluate import evaluate  # noqa: E402
from batch_jobs.gaussians.params import from_arrays, sh_degree_of  # noqa: E402
from batch_jobs.gaussians.ply import read_ply  # noqa: E402
from batch_jobs.runner import run_stage  # noqa: E402
from batch_jobs.sparse_model import SparseModel, SparseView, held_out, read_sparse_model  # noqa: E402
from batch_jobs.splat.stage import HOLDOUT_EVERY  # noqa: E402
from core import stages  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
OPENSPLAT = REPO / ".cache" / "opensplat" / "build" / "opensplat"
OPENSPLAT_BACKGROUND = (0.6130, 0.0101, 0.3984)  # OpenSplat model.hpp: fixed, not optimised
COLMAP_PINHOLE = 1


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix (COLMAP's convention), w >= 0."""
    K = np.array([[R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
                  [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
                  [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
                  [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]]]) / 3.0
    w, V = np.linalg.eigh(K)
    q = V[[3, 0, 1, 2], np.argmax(w)]
    return -q if q[0] < 0 else q


@dataclass
class Shot:
    """One image of a COLMAP project: the photo at its working size, PINHOLE K, world->camera pose."""

    name: str
    rgb: np.ndarray  # [H, W, 3] uint8
    K: np.ndarray  # [3, 3]
    R: np.ndarray  # [3, 3]
    t: np.ndarray  # [3]


def shot(v: View, sv: SparseView) -> Shot:
    rgb = (v.photo().numpy() * 255.0 + 0.5).astype(np.uint8)  # exact: the photo is bytes / 255
    return Shot(v.name, rgb, v.K.double().numpy(), sv.R, sv.t)


def write_colmap_project(model: SparseModel, shots: list[Shot], out: Path) -> None:
    """`out/images/*.png` and `out/sparse/0/*.bin` (COLMAP binary): one PINHOLE camera per shot
    at the shot's size, all SfM points. Points keep no tracks (OpenSplat reads only their
    position and colour)."""
    img_dir, sparse = out / "images", out / "sparse" / "0"
    img_dir.mkdir(parents=True, exist_ok=True)
    sparse.mkdir(parents=True, exist_ok=True)
    cams, imgs = bytearray(struct.pack("<Q", len(shots))), bytearray(struct.pack("<Q", len(shots)))
    for cid, s in enumerate(shots, start=1):
        h, w = s.rgb.shape[:2]
        cv2.imwrite(str(img_dir / f"{s.name}.png"), cv2.cvtColor(s.rgb, cv2.COLOR_RGB2BGR))
        cams += struct.pack("<iiQQdddd", cid, COLMAP_PINHOLE, w, h, s.K[0, 0], s.K[1, 1], s.K[0, 2], s.K[1, 2])
        imgs += struct.pack("<i4d3di", cid, *rotmat_to_qvec(s.R), *s.t, cid)
        imgs += f"{s.name}.png".encode() + b"\0" + struct.pack("<Q", 0)
    pts = bytearray(struct.pack("<Q", len(model.points)))
    for j, (xyz, rgb) in enumerate(zip(model.points, model.colors, strict=True)):
        pts += struct.pack("<Q3d3BdQ", j + 1, *xyz, *(int(c) for c in rgb), 0.0, 0)
    (sparse / "cameras.bin").write_bytes(bytes(cams))
    (sparse / "images.bin").write_bytes(bytes(imgs))
    (sparse / "points3D.bin").write_bytes(bytes(pts))


def opensplat_renders(opensplat: Path, model: SparseModel, ply: Path, steps: int, test: list[Shot],
                      work: Path) -> dict[str, np.ndarray]:
    """OpenSplat's own render of each held-out view from its trained PLY, unchanged.

    OpenSplat has no render-only mode; its `--val-render` writes the withheld camera's render
    every 10th step. So each view is a project of two shots: the held-out one (`--val-image`)
    and a dummy training camera that sees no Gaussian (all behind it). Resumed from the PLY
    relabelled as step `steps - 1` with `-n steps`, it runs one step whose gradients are all
    zero (fresh Adam: a zero update; no densification after `steps / 2`), then renders the
    held-out view at step `steps` (a multiple of 10) with the trained scene.
    """
    raw = ply.read_bytes()
    tag = b"comment Generated by opensplat at iteration "
    head, rest = raw.split(tag, 1)
    resume = work / "resume.ply"
    resume.write_bytes(head + tag + str(steps - 1).encode() + rest[rest.index(b"\n"):])
    far = float(np.abs(model.points).max()) * 10 + 10  # a camera past every point, looking away
    out = {}
    for s in test:
        dummy = Shot("zz_dummy", s.rgb, s.K, np.eye(3), np.array([0.0, 0.0, -far]))
        proj = work / f"render_{s.name}"
        write_colmap_project(model, [s, dummy], proj)
        cmd = [str(opensplat), str(proj), "-o", str(proj / "unused.ply"), "-n", str(steps), "--num-downscales", "0",
               "--keep-crs", "--cpu", "--resume", str(resume), "--val-image", f"{s.name}.png",
               "--val-render", str(proj / "val")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (proj / "log.txt").write_text(proc.stdout + proc.stderr)
        img = cv2.imread(str(proj / "val" / f"{steps}.png"))
        if proc.returncode or img is None:
            raise RuntimeError(f"OpenSplat render of {s.name} failed: {proc.stderr[-1000:]}")
        out[s.name] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        # The scene OpenSplat saved after that step must be the trained one, unchanged.
        before, after = read_ply(ply), read_ply(proj / "unused.ply")
        moved = max(float(np.abs(before[k] - after[k]).max()) for k in ("means", "scales", "opacities", "sh0"))
        if moved > 1e-4:
            raise RuntimeError(f"OpenSplat's render step changed the scene ({moved:.2e})")
    return out


def score_images(renders: dict[str, np.ndarray], test: list[View]) -> dict[str, Any]:
    """PSNR / SSIM of 8-bit renders against the held-out photos (the same functions as evaluate)."""
    per_view = {}
    for v in test:
        img = torch.from_numpy(renders[v.name].astype(np.float32) / 255.0)
        per_view[v.name] = {"psnr": round(losses.psnr(img, v.photo()), 4),
                            "ssim": round(float(losses.ssim(img, v.photo())), 5)}
    return {"n_views": len(per_view), "psnr": round(float(np.mean([m["psnr"] for m in per_view.values()])), 4),
            "ssim": round(float(np.mean([m["ssim"] for m in per_view.values()])), 5), "views": per_view}


def evaluate_ply(path: Path, views: list[View], background: Background) -> dict[str, Any]:
    params = from_arrays(read_ply(path))
    res = evaluate(params, views, sh_degree_of(params), background)
    res["gaussians"] = int(params["means"].shape[0])
    return res


def run_sfm(scene: Path, ws: Path, preset: str, reuse: bool) -> float:
    if reuse and (ws / "sfm" / "_SUCCESS.json").is_file():
        return 0.0
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "request.json").write_text(json.dumps({"request_id": f"peer-{scene.name}", "input": str(scene / "images"),
                                                 "options": {"preset": preset}}))
    t0 = time.perf_counter()
    for stage in ("frames", "sfm"):
        r = run_stage(stage, str(ws), force=True)
        if r.exit_code:
            raise RuntimeError(f"{scene.name}: {stage} failed: {r.error}")
    return time.perf_counter() - t0


def budget_tag(steps: int | None, long_side: int | None) -> str:
    """'' at the preset's budget, else e.g. '-3000x640': names the results and OpenSplat's project."""
    if steps is None and long_side is None:
        return ""
    return f"-{steps or 'preset'}x{long_side or 'preset'}"


def run_scene(scene: Path, work: Path, preset: str, steps: int | None, opensplat: Path,
              reuse: bool, eval_only: bool = False, long_side: int | None = None) -> dict[str, Any]:
    ws = work / scene.name / "ws"
    sfm_s = run_sfm(scene, ws, preset, reuse)
    options: dict[str, Any] = {"preset": preset}
    if steps is not None:
        options["splat_steps"] = steps
    if long_side is not None:
        stages.REGISTRY["splat"].presets[preset]["max_long_side"] = long_side
    params = stages.resolve("splat", options)
    n_steps = int(params["steps"])
    tag = budget_tag(steps, long_side)

    prior = json.loads((work / f"results-{scene.name}{tag}.json").read_text()) if eval_only else None
    if prior is None:
        t0 = time.perf_counter()
        r = run_stage("splat", str(ws), options=options, force=True)
        ours_wall = time.perf_counter() - t0
        if r.exit_code:
            raise RuntimeError(f"{scene.name}: splat failed: {r.error}")
    else:
        ours_wall = prior["ours"]["wall_s"]
    report = json.loads((ws / "splat" / "report.json").read_text())
    model = read_sparse_model(ws / "sfm" / "sparse" / "0")
    views = load_views(model, ws / "sfm" / "images", int(params["max_long_side"]))
    size = [views[0].width, views[0].height]
    if prior is not None and (report["steps"], report["resolution"]) != (n_steps, size):
        # One splat per workspace: the last budget trained is the one --eval-only would score.
        raise RuntimeError(f"{scene.name}: the workspace's splat is from a {report['steps']}-step run at "
                           f"{report['resolution']}, not {n_steps} at {size}: rerun this budget without --eval-only")
    test_i = [i for i in range(len(views)) if held_out(i, HOLDOUT_EVERY)]
    train_i = [i for i in range(len(views)) if not held_out(i, HOLDOUT_EVERY)]
    test = [views[i] for i in test_i]
    proj = work / scene.name / f"opensplat{tag}"
    write_colmap_project(model, [shot(views[i], model.views[i]) for i in train_i], proj)
    ply_out = proj / "splat.ply"
    cmd = [str(opensplat), str(proj), "-o", str(ply_out), "-n", str(n_steps), "--num-downscales", "0",
           "--warmup-length", "100", "--refine-every", "50", "--keep-crs", "--cpu"]
    if prior is None:
        ply_out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        os_wall = time.perf_counter() - t0
        (proj / "log.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"{scene.name}: OpenSplat exited {proc.returncode}: {proc.stderr[-2000:]}")
    else:
        os_wall = prior["opensplat"]["wall_s"]

    if not isinstance(report["background"], dict):  # a splat stage before VERSION 2: one colour
        raise RuntimeError(f"{scene.name}: the workspace's splat is from an older stage: rerun without --eval-only")
    ours = evaluate_ply(ws / "splat" / "point_cloud.ply", test, Background.from_json(report["background"]))
    # OpenSplat's CPU renderer and ours disagree on each other's scenes (see docs/benchmarks.md):
    # its scene is scored on its own renders; ours through our renderer (the stage's evaluator).
    renders = opensplat_renders(opensplat, model, ply_out, n_steps, [shot(views[i], model.views[i]) for i in test_i],
                                proj)
    peer = {**score_images(renders, test), "gaussians": int(from_arrays(read_ply(ply_out))["means"].shape[0]),
            "ours_renderer_psnr": evaluate_ply(ply_out, test, Background.uniform(torch.tensor(OPENSPLAT_BACKGROUND)))["psnr"]}
    return {"scene": scene.name, "budget_tag": tag, "preset": preset, "steps": n_steps, "resolution": size,
            "n_train": len(train_i), "n_test": len(test_i), "sfm_seconds": round(sfm_s, 1),
            "initial_points": len(model.points),
            "ours": {**ours, "wall_s": round(ours_wall, 1), "train_s": report["train_seconds"],
                     "stage_heldout_psnr": report["heldout_psnr"]},
            "opensplat": {**peer, "wall_s": round(os_wall, 1), "cmd": " ".join(cmd[1:])}}


def print_scene(res: dict[str, Any]) -> None:
    o, p = res["ours"], res["opensplat"]
    print(f"\n{res['scene']}: {res['n_train']} train / {res['n_test']} held out, {res['steps']} steps at "
          f"{res['resolution'][0]}x{res['resolution'][1]}, {res['initial_points']} SfM points")
    print(f"  {'view':<16}{'ours PSNR':>10}{'ours SSIM':>10}{'OS PSNR':>10}{'OS SSIM':>10}{'dPSNR':>8}")
    for name, m in o["views"].items():
        q = p["views"][name]
        print(f"  {name:<16}{m['psnr']:>10.2f}{m['ssim']:>10.4f}{q['psnr']:>10.2f}{q['ssim']:>10.4f}"
              f"{m['psnr'] - q['psnr']:>+8.2f}")
    print(f"  {'mean':<16}{o['psnr']:>10.2f}{o['ssim']:>10.4f}{p['psnr']:>10.2f}{p['ssim']:>10.4f}"
          f"{o['psnr'] - p['psnr']:>+8.2f}")
    print(f"  wall: ours {o['wall_s']:.1f} s (training {o['train_s']:.1f} s), OpenSplat {p['wall_s']:.1f} s: "
          f"ours {p['wall_s'] / o['wall_s']:.2f}x as fast; Gaussians ours {o['gaussians']}, OpenSplat {p['gaussians']}")
    print(f"  (our stage's own held-out PSNR: {o['stage_heldout_psnr']:.2f} dB; OpenSplat's PLY through our renderer: "
          f"{p['ours_renderer_psnr']:.2f} dB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="fox", help="comma-separated folders of ../shared/datasets")
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's splat steps (both trainers)")
    ap.add_argument("--long-side", type=int, default=None,
                    help="override the preset's working size, the photos' long side in px (both trainers)")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "splat_peer")
    ap.add_argument("--opensplat", type=Path, default=OPENSPLAT)
    ap.add_argument("--reuse-sfm", action="store_true", help="keep an earlier run's frames + sfm")
    ap.add_argument("--eval-only", action="store_true",
                    help="re-evaluate an earlier run's splats (its recorded walls) without training")
    args = ap.parse_args(argv)
    if not args.opensplat.is_file():
        print(f"{args.opensplat} missing: run bench/peers/build_opensplat.sh", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    results = []
    for name in args.scenes.split(","):
        res = run_scene(DATASETS / name, args.work, args.preset, args.steps, args.opensplat, args.reuse_sfm or args.eval_only,
                        args.eval_only, args.long_side)
        print_scene(res)
        results.append(res)
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / f"results-{name}{res['budget_tag']}.json").write_text(json.dumps(res, indent=1))
    print(f"\n{'capture':<16}{'ours PSNR/SSIM':>18}{'OS PSNR/SSIM':>18}{'ours wall':>11}{'OS wall':>9}{'speed':>7}")
    for r in results:
        o, p = r["ours"], r["opensplat"]
        print(f"{r['scene']:<16}{o['psnr']:>10.2f}/{o['ssim']:.3f}{p['psnr']:>10.2f}/{p['ssim']:.3f}"
              f"{o['wall_s']:>10.0f}s{p['wall_s']:>8.0f}s{p['wall_s'] / o['wall_s']:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
