"""Captures at real size: the frames stage on a long 4K video, and sfm on a few hundred frames.

    python bench/capture_size.py video [--seconds 60] [--width 3840] [--height 2160]
    python bench/capture_size.py sfm [--frames 300] [--short 60]

`video`: renders a long H.264 video (a textured plane the camera pans and zooms over, PyAV,
into a temporary folder), then runs, each in its own process so its peak RSS is its own:
the baseline, PyAV decoding every frame and doing nothing with it (`video_decode.iter_frames`),
and the frames stage (`preset standard`, its frame selection and JPEG writing). Prints time per
frame and peak RSS of both, and the ratios. Bounded memory means the stage's peak RSS does not
grow with the length: compare runs of different `--seconds`.

`sfm`: renders the synthetic orbit (emulator.synthetic_scene) as a video of `--frames` frames,
keeps every frame (`max_frames`), and runs frames then sfm (sequential + loop-closure matching,
since it is a video) on `--short` frames and on all of them. Prints seconds per frame of each
and the ratio: near 1 means the cost grows linearly with the frames.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/, whose queue.py would shadow the standard library's: use the repo.
sys.path[0] = str(REPO)
os.environ.setdefault("SPLATPIPE_STATUS_STORE", "log")


def render_pan_video(path: Path, seconds: float, width: int, height: int, fps: int = 30) -> int:
    """A textured plane under a camera that pans and zooms: sharp, detailed, every frame different."""
    import av
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    tex_h, tex_w = int(height * 1.6), int(width * 1.6)
    small = rng.integers(0, 256, (tex_h // 8, tex_w // 8, 3), dtype=np.uint8)
    texture = cv2.resize(small, (tex_w, tex_h), interpolation=cv2.INTER_CUBIC)
    texture = cv2.addWeighted(texture, 0.7, rng.integers(0, 256, texture.shape, dtype=np.uint8), 0.3, 0)
    n = int(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        for i in range(n):
            a = 2 * np.pi * i / max(1, n)
            zoom = 1.15 + 0.1 * np.sin(3 * a)
            cx = tex_w / 2 + 0.15 * tex_w * np.cos(a)
            cy = tex_h / 2 + 0.15 * tex_h * np.sin(a)
            m = cv2.getRotationMatrix2D((cx, cy), 10 * np.sin(a), zoom)
            m[:, 2] += (width / 2 - cx, height / 2 - cy)
            img = cv2.warpAffine(texture, m, (width, height), flags=cv2.INTER_LINEAR)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def child(what: str, video: str, ws: str) -> None:
    """Runs in its own process; prints its seconds, frames and peak RSS as JSON."""
    t0 = time.perf_counter()
    if what == "decode":
        from batch_jobs.frames import video_decode

        stats = video_decode.DecodeStats()
        for _ in video_decode.iter_frames(Path(video), stats):
            pass
        frames = stats.decoded
    else:
        from batch_jobs.runner import run_stage

        res = run_stage("frames", ws, force=True)
        if res.exit_code:
            raise SystemExit(f"frames failed: {res.error}")
        frames = res.success["metrics"]["seen"]
    print(json.dumps({"seconds": time.perf_counter() - t0, "frames": frames, "peak_rss_mib": peak_rss_kib() / 1024}))


def peak_rss_kib() -> int:
    """This process's own peak RSS: VmHWM belongs to the address space exec made, whereas
    getrusage's ru_maxrss of a forked child starts from its parent's RSS at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _run_child(what: str, video: Path, ws: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", what, str(video), str(ws)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_video(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="capture-size-") as tmp:
        video = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        n = render_pan_video(video, args.seconds, args.width, args.height)
        print(f"rendered {n} frames at {args.width}x{args.height} ({video.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t0:.0f} s")
        ws = Path(tmp) / "ws"
        ws.mkdir()
        (ws / "request.json").write_text(json.dumps({"request_id": "capture-size", "input": str(video),
                                                     "options": {"preset": args.preset}}))
        base = _run_child("decode", video, ws)
        ours = _run_child("frames", video, ws)
        kept = json.loads((ws / "frames" / "report.json").read_text())["kept"]
    for label, r in (("PyAV decode only", base), (f"frames stage ({args.preset})", ours)):
        print(f"  {label:<26} {r['frames']} frames  {1000 * r['seconds'] / r['frames']:6.1f} ms/frame  "
              f"{r['seconds']:6.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB")
    print(f"  kept {kept} frames; ratio frames/decode: time {ours['seconds'] / base['seconds']:.2f}  "
          f"peak RSS {ours['peak_rss_mib'] / base['peak_rss_mib']:.2f}")
    return 0


def bench_sfm(args: argparse.Namespace) -> int:
    from batch_jobs.runner import run_stage
    from emulator.synthetic_scene import SyntheticScene, write_video

    scene = SyntheticScene(7)
    t0 = time.perf_counter()
    cams = scene.orbit_cameras(args.frames, args.width, args.height, arc_degrees=args.arc)
    frames = [scene.render(c, supersample=args.supersample)[0] for c in cams]
    print(f"rendered {len(frames)} orbit frames at {args.width}x{args.height} in {time.perf_counter() - t0:.0f} s")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="capture-size-sfm-") as tmp:
        for n in (args.short, args.frames):
            video = Path(tmp) / f"orbit-{n}.mp4"
            # The first n frames, at a frame rate that keeps the same motion per second.
            write_video(video, frames[:n], fps=30)
            ws = Path(tmp) / f"ws-{n}"
            ws.mkdir()
            (ws / "request.json").write_text(json.dumps({"request_id": f"sfm-{n}", "input": str(video),
                                                         "options": {"preset": args.preset, "max_frames": n}}))
            t0 = time.perf_counter()
            for stage in ("frames", "sfm"):
                res = run_stage(stage, str(ws), force=True)
                if res.exit_code:
                    print(f"  {n} frames: {stage} failed: {res.error}")
                    return 1
            seconds = time.perf_counter() - t0
            report = json.loads((ws / "sfm" / "report.json").read_text())
            rows[n] = seconds / report["total"]
            v = report["verification"]["figures"]
            t = report["timings"]
            print(f"  {n:>4} frames: {report['registered']}/{report['total']} registered, {report['matcher']} "
                  f"({report['pairs']} pairs, {report['loop_pairs']} loop, {report['loop_pairs_verified']} verified), "
                  f"{report['mapper']}, verification {'passed' if v else '-'} "
                  f"(disagree {v['disagree_fraction']}), sfm {t['total']:.0f} s [features {t['features']:.0f}, "
                  f"matching {t['matching']:.0f}, mapping {t['mapping']:.0f}, verify {t['verify']:.0f}], "
                  f"frames+sfm {seconds:.0f} s = {rows[n]:.2f} s/frame")
    print(f"ratio s/frame {args.frames} vs {args.short} frames: {rows[args.frames] / rows[args.short]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        child(*argv[1:4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    v = sub.add_parser("video")
    v.add_argument("--seconds", type=float, default=60.0)
    v.add_argument("--width", type=int, default=3840)
    v.add_argument("--height", type=int, default=2160)
    v.add_argument("--preset", default="standard")
    s = sub.add_parser("sfm")
    s.add_argument("--frames", type=int, default=300)
    s.add_argument("--short", type=int, default=60)
    s.add_argument("--width", type=int, default=480)
    s.add_argument("--height", type=int, default=360)
    s.add_argument("--supersample", type=int, default=1)
    s.add_argument("--arc", type=float, default=300.0, help="degrees of orbit the frames cover")
    s.add_argument("--preset", default="standard")
    args = ap.parse_args(argv)
    return bench_video(args) if args.what == "video" else bench_sfm(args)


if __name__ == "__main__":
    sys.exit(main())
