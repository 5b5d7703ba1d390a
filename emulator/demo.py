"""The demo: a real reconstruction of the synthetic sample scene through the whole local stack.

1. brings the stack up unless it is up (and takes it down afterwards unless `--keep`);
2. renders the sample video of `emulator.synthetic_scene` once (cached in .cache/demo/);
3. uploads it to `gs://UPLOADS_BUCKET/{session}/scene.mp4` with the request's options in the
   object's metadata (preset `preview`) — the upload event makes the request, as on Google Cloud;
4. follows the request (GET /status on the queue function) with a progress bar per stage;
5. downloads the outputs (splat PLY and SPZ, preview PNG, mesh GLB/PLY, reports) to
   `demo-output/{request_id}/` and writes `summary.json` there; exits non-zero on failure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from core.stages import ORDER
from emulator.stack import REPO, Stack, StackConfig, StackInfo, env_overrides, running

SAMPLE_DIR = REPO / ".cache" / "demo" / "video-90-480x360-v1"
DEFAULT_OUT = REPO / "demo-output"
DEMO_OPTIONS = {"preset": "preview"}
STAGES = ORDER
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def ensure_sample() -> Path:
    """The sample video (rendered once: about a minute on 2 cores)."""
    video = SAMPLE_DIR / "scene.mp4"
    if video.exists():
        return video
    from emulator.synthetic_scene import render_video_sample

    print("rendering the sample scene video (once) …", flush=True)
    tmp = SAMPLE_DIR.with_name(SAMPLE_DIR.name + f".tmp{os.getpid()}")
    render_video_sample(tmp, n_frames=90, width=480, height=360)
    try:
        tmp.rename(SAMPLE_DIR)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return video


def upload_video(info: StackInfo, video: Path, session: str, options: Mapping[str, Any], priority: int = 0) -> str:
    from google.cloud import storage

    with env_overrides(info.env):
        client = storage.Client(project=info.env["GOOGLE_CLOUD_PROJECT"])
        blob = client.bucket(info.env["UPLOADS_BUCKET"]).blob(f"{session}/{video.name}")
        blob.metadata = {"options": json.dumps(dict(options)), "priority": str(priority)}
        blob.upload_from_filename(str(video), content_type="video/mp4")
    return f"gs://{info.env['UPLOADS_BUCKET']}/{session}/{video.name}"


def find_request(info: StackInfo, input_uri: str, timeout: float = 120) -> str:
    """The request the upload made (the Firestore mirror, queried by input)."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    with env_overrides(info.env):
        db = firestore.Client(project=info.env["GOOGLE_CLOUD_PROJECT"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            docs = list(db.collection("reconstructions").where(filter=FieldFilter("input", "==", input_uri)).stream())
            if docs:
                return docs[0].id
            time.sleep(0.5)
    raise TimeoutError(f"no request appeared for {input_uri} within {timeout:.0f}s (see {info.log('relay')} "
                       f"and {info.log('fn-on_upload')})")


def get_status(info: StackInfo, request_id: str) -> dict[str, Any]:
    resp = requests.get(f"{info.urls['queue']}/status/{request_id}", timeout=30)
    resp.raise_for_status()
    return dict(resp.json())


def follow(info: StackInfo, request_id: str, timeout: float, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Poll the status with a progress bar per stage until the request ends."""
    from tqdm import tqdm

    bars = {s: tqdm(total=100, desc=f"{s:6} PENDING", position=i, leave=True, file=sys.stdout,
                    bar_format="{desc:<24} {bar} {n:3.0f}% {elapsed}{postfix}") for i, s in enumerate(stages)}
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            try:
                status = get_status(info, request_id)
            except requests.RequestException as exc:  # a function restarting: keep following
                print(f"status unavailable ({exc}); retrying", file=sys.stderr)
                time.sleep(2.0)
                continue
            for s, bar in bars.items():
                st = (status.get("stages") or {}).get(s) or {}
                frac = float((status.get("progress") or {}).get(s) or 0.0)
                if st.get("state") in ("SUCCEEDED", "SKIPPED"):
                    frac = 1.0
                bar.n = round(100 * frac, 1)
                bar.set_description_str(f"{s:6} {st.get('state') or 'PENDING'}", refresh=False)
                bar.set_postfix_str(str(st.get("message") or "")[:60], refresh=False)
                bar.refresh()
            if status.get("state") in TERMINAL:
                return status
            time.sleep(1.0)
    finally:
        for bar in bars.values():
            bar.close()
    raise TimeoutError(f"request {request_id} still {status.get('state')} after {timeout:.0f}s")


def download_outputs(info: StackInfo, status: Mapping[str, Any], dest: Path) -> list[Path]:
    from google.cloud import storage

    files = []
    with env_overrides(info.env):
        client = storage.Client(project=info.env["GOOGLE_CLOUD_PROJECT"])
        for uri in sorted((status.get("outputs") or {}).values()):
            if not isinstance(uri, str) or not uri.startswith("gs://"):
                continue
            bucket, _, key = uri[5:].partition("/")
            stage_and_file = "/".join(key.split("/")[-2:])
            path = dest / stage_and_file
            path.parent.mkdir(parents=True, exist_ok=True)
            client.bucket(bucket).blob(key).download_to_filename(str(path))
            files.append(path)
    return files


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (dt.datetime.fromisoformat(b.replace("Z", "+00:00")) - dt.datetime.fromisoformat(a.replace("Z", "+00:00"))
            ).total_seconds()


def run_demo(run_dir: Path, out: Path | None = None, keep: bool = False, timeout: float = 1800,
             options: Mapping[str, Any] | None = None) -> int:
    t0 = time.monotonic()
    out = out or DEFAULT_OUT
    info = running(run_dir)
    stack = Stack(StackConfig(run_dir=run_dir))
    started_here = info is None
    if info is None:
        info = stack.up()
    try:
        if info.depth_model_untrained:
            print(f"note: no Depth-Anything-V2 weights can be downloaded here; DEPTH_MODEL is an UNTRAINED stand-in "
                  f"({info.depth_model}), so the depth maps are random, not depth (the splat and mesh do not "
                  f"depend on them in the preview preset). Set DEPTH_MODEL to real weights for real depth.")
        video = ensure_sample()
        session = "demo-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        opts = dict(options or DEMO_OPTIONS)
        uri = upload_video(info, video, session, opts)
        print(f"uploaded {video} -> {uri} with options {json.dumps(opts)}")
        request_id = find_request(info, uri)
        print(f"request {request_id} (status: {info.urls['queue']}/status/{request_id})")
        status = follow(info, request_id, timeout)
        dest = out / request_id
        dest.mkdir(parents=True, exist_ok=True)
        elapsed = time.monotonic() - t0
        timings = {s: _seconds(st.get("started_at"), st.get("finished_at"))
                   for s, st in (status.get("stages") or {}).items()}
        summary = {"request_id": request_id, "state": status.get("state"), "input": uri, "options": opts,
                   "error": status.get("error"), "outputs": status.get("outputs"), "stage_seconds": timings,
                   "demo_seconds": round(elapsed, 1), "depth_model": info.depth_model,
                   "depth_model_untrained": info.depth_model_untrained}
        if status.get("state") != "COMPLETED":
            (dest / "summary.json").write_text(json.dumps(summary, indent=2))
            err = status.get("error") or {}
            print(f"\nrequest {request_id} ended {status.get('state')}: [{err.get('code')}] {err.get('message')} "
                  f"(stage {err.get('stage')}); logs: {info.run_dir}/workflows/batch/", file=sys.stderr)
            return 1
        files = download_outputs(info, status, dest)
        summary["demo_seconds"] = round(time.monotonic() - t0, 1)
        (dest / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"\nCOMPLETED in {summary['demo_seconds']:.0f}s; outputs in {dest}:")
        for f in files:
            print(f"  {f.relative_to(dest)}  ({f.stat().st_size:,} bytes)")
        print("  summary.json")
        print("stage times: " + ", ".join(f"{s} {t:.0f}s" for s, t in timings.items() if t is not None))
        return 0
    finally:
        if started_here and not keep:
            stack.down(quiet=True)
            print("local stack stopped (use --keep to leave it running)")
