"""The GPU check: every CUDA path of splatpipe, run once on a GPU machine, in one command.

On an NVIDIA machine with its own Python, torch (CUDA build) and nvcc, no network, and only
what was carried (`.gpu-carry/`, made here by bench/gpu/prepare.sh), `run` does, in order,
each step in its own process with its own time limit inside one overall budget (a step that
fails or runs out of time is recorded, and the next one runs):

    env             the machine: Python, torch, CUDA, the GPU, nvcc, which packages import
    wheels          installs the carried wheels (pycolmap, plyfile) into WORK/site
    carry           the carried workspace: its layout, the sparse model read back, the sizes
    depth           a Depth-Anything-V2-Small-sized model with random weights (the same
                    compute as trained ones): frames/s at 518 px, batch sizes 1, 8, 16; then
                    the `depth` stage on the carried workspace
    gsplat_build    gsplat's CUDA extension from the carried sdist (TORCH_CUDA_ARCH_LIST=9.0,
                    MAX_JOBS=16; or a carried prebuilt wheel), timed; the wheel is copied to OUT
    cuda_tests      pytest -m cuda on the test files that carry the marker (the parity tests)
    parity          the parity figures: our CPU rasterizer vs gsplat's, images and gradients
    splat_standard  the `splat` stage, preset standard, on the carried workspace
    mesh            the `mesh` stage's GPU path (open3d's TSDF when open3d imports; otherwise
                    its renders alone, and the fusion reported as not run)
    splat_high      the `splat` stage, preset high, in whatever time is left

and writes OUT/gpu_check.json (every figure, each step's status) and OUT/gpu_check.log (all
output), the junit file of the CUDA tests, the standard splat's preview and the built gsplat
wheel. Without CUDA every CUDA step says "skipped: no CUDA" and carries no figure: nothing is
ever simulated. tests/bench/test_gpu_check.py runs it so (the dry run).

    bash bench/gpu/run.sh                       # on the GPU machine (docs/gpu-check.md)
    python bench/gpu/gpu_check.py run --carry .gpu-carry --out OUT [--budget 450] [--only a,b]
    python bench/gpu/gpu_check.py prepare --scene fountain-P11 --carry .gpu-carry   # here
    python bench/gpu/gpu_check.py pack --workspace WS --carry DIR
    python bench/gpu/gpu_check.py size --carry .gpu-carry
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SUMMARY_FILE = "gpu_check.json"
LOG_FILE = "gpu_check.log"
MANIFEST = "MANIFEST.json"
TRAVEL_LIMIT = 64 * 2**20  # what a device call may carry: tracked + untracked files + carried folders
OUT_FILE_LIMIT = 15 * 2**20  # a file in OUT comes back up to 16 MiB
DEFAULT_BUDGET_S = 450.0  # the whole run, so that it ends well inside 8 minutes
GSPLAT_ARCH = "9.0"  # Hopper: H100, H200
DEVICE = "cuda"
DEPTH_BATCHES = (1, 8, 16)
DEPTH_INPUT = 518
RANDOM_WEIGHTS_NOTE = ("random weights: the architecture and sizes of Depth-Anything-V2-Small (24.8 M parameters), "
                       "built here; the compute per frame is that of the trained model, the depth maps are meaningless")
# What the carried workspace must hold for the splat, depth and mesh stages (docs/contracts.md, "Stage outputs").
WS_REQUIRED = ("request.json", "sfm/_SUCCESS.json", "sfm/sparse/0/cameras.bin", "sfm/sparse/0/images.bin",
               "sfm/sparse/0/points3D.bin")
SPLAT_PROGRESS = re.compile(r"\[splat\]\s+[\d.]+% step (\d+)/(\d+), loss [\d.naif]+, (\d+) Gaussians")
GPUMEM = re.compile(r"GPUMEM (\d+) (\d+)")


@dataclass(frozen=True)
class Step:
    name: str
    needs_cuda: bool  # skipped ("skipped: no CUDA") where torch sees no GPU
    needs_gsplat: bool  # skipped on a GPU machine where gsplat_build did not succeed
    limit_s: float  # its own time limit (the budget left may cut it shorter)
    min_s: float  # not started with less time than this left
    summary: str


STEPS: tuple[Step, ...] = (
    Step("env", False, False, 60, 5, "the machine: Python, torch, CUDA, the GPU, nvcc, packages"),
    Step("wheels", False, False, 90, 5, "the carried wheels installed into WORK/site"),
    Step("carry", False, False, 60, 5, "the carried workspace: layout, sparse model, sizes"),
    Step("depth", True, False, 75, 20, "Depth-Anything-V2-Small-sized model (random weights): frames/s"),
    Step("gsplat_build", True, False, 330, 60, "gsplat's CUDA extension built from the sdist (or carried)"),
    Step("cuda_tests", False, True, 90, 15, "pytest -m cuda (the parity tests)"),
    Step("parity", True, True, 60, 10, "CPU rasterizer vs gsplat: relative errors"),
    Step("splat_standard", True, True, 180, 30, "the splat stage, preset standard"),
    Step("mesh", True, True, 60, 10, "the mesh stage's GPU path"),
    Step("splat_high", True, True, 150, 45, "the splat stage, preset high, in the time left"),
)
STEP_NAMES = tuple(s.name for s in STEPS)


# --- the parent: one process per step, a time limit each, one summary -----------------------------

class Log:
    """Every line, time-stamped since the start, to OUT/gpu_check.log and to stdout."""

    def __init__(self, path: Path) -> None:
        self.t0 = time.monotonic()
        self._fh = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, line: str, step: str = "gpu_check") -> None:
        text = f"[{time.monotonic() - self.t0:7.1f}s {step}] {line.rstrip()}"
        with self._lock:
            self._fh.write(text + "\n")
            self._fh.flush()
            print(text, flush=True)

    def close(self) -> None:
        self._fh.close()


def _child_env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("SPLATPIPE_STATUS_STORE", "log")
    return env


def run_child(step: Step, limit: float, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    """Run `step` in its own process (group), killed at `limit` seconds; its result JSON, or what
    its output says when it did not write one."""
    result_path = Path(args.work) / "results" / f"{step.name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "step", step.name, "--carry", str(args.carry),
           "--work", str(args.work), "--out", str(args.out), "--result", str(result_path), "--limit", f"{limit:.0f}"]
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(Path(args.work) / "site"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line))
            log(line, step.name)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        log(f"time limit of {limit:.0f} s reached: stopping the step", step.name)
        _kill_group(proc)
    reader.join(timeout=10)
    seconds = round(time.monotonic() - t0, 2)
    result: dict[str, Any] = {}
    if result_path.exists():
        with contextlib.suppress(json.JSONDecodeError):
            result = json.loads(result_path.read_text())
    if not result:
        if timed_out:
            result = {"status": f"timed out after {limit:.0f} s"}
        else:
            result = {"status": f"failed: exit code {proc.returncode} without a result"}
        result["output_tail"] = [line.rstrip() for _, line in lines[-15:]]
    if step.name.startswith("splat_") and not str(result.get("status", "")).startswith("ok"):
        result.update(partial_splat(lines))
    result["seconds"] = seconds
    result["limit_s"] = round(limit)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the step's own process group (it and what it started: pip, nvcc)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def partial_splat(lines: list[tuple[float, str]]) -> dict[str, Any]:
    """What a splat run that did not finish measured, from its progress lines (time-stamped by the
    parent as they came): steps done, steps/s between the first and the last progress line (the
    training alone: loading is over by the first), Gaussians then, and the last GPU memory peak."""
    points = [(t, int(m[1]), int(m[2]), int(m[3])) for t, line in lines if (m := SPLAT_PROGRESS.search(line))]
    mems = [(int(m[1]), int(m[2])) for _, line in lines if (m := GPUMEM.search(line))]
    out: dict[str, Any] = {}
    if mems:
        out["peak_gpu_mem_bytes"], out["peak_gpu_mem_reserved_bytes"] = mems[-1]
    if len(points) >= 2 and points[-1][0] > points[0][0] and points[-1][1] > points[0][1]:
        (t0, s0, total, _), (t1, s1, _, gaussians) = points[0], points[-1]
        rate = (s1 - s0) / (t1 - t0)
        out.update({"partial": True, "steps_done": s1, "steps_total": total,
                    "steps_per_s_partial": round(rate, 3), "gaussians_at_stop": gaussians,
                    # Labelled as what it is: the measured rate carried to the whole run.
                    "train_seconds_if_rate_held": round(total / rate, 1)})
    return out


def goals(steps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's goals, each met / not met / not measured, with the figure it was judged on."""
    def status(name: str) -> str:
        return str(steps.get(name, {}).get("status", "not run"))

    out: dict[str, dict[str, Any]] = {}
    par = steps.get("parity", {})
    if "rasterizer_max_rel" in par:
        out["parity"] = {"goal": "CPU rasterizer vs gsplat within 1e-4 relative on images and gradients",
                         "figure": par["rasterizer_max_rel"], "render_max_rel": par.get("render_max_rel"),
                         "result": "met" if par["rasterizer_max_rel"] <= 1e-4 else "not met"}
    else:
        out["parity"] = {"goal": "CPU rasterizer vs gsplat within 1e-4 relative", "result": f"not measured ({status('parity')})"}
    sp = steps.get("splat_standard", {})
    goal = "standard splat (7,000 steps at 1280 px) in at most 120 s (the stage's wall time)"
    if status("splat_standard").startswith("ok") and "stage_wall_s" in sp:
        out["splat_standard"] = {"goal": goal, "figure": sp["stage_wall_s"], "train_seconds": sp.get("train_seconds"),
                                 "result": "met" if sp["stage_wall_s"] <= 120 else "not met"}
    elif status("splat_standard").startswith("timed out"):
        out["splat_standard"] = {"goal": goal, "result": f"not met: {status('splat_standard')}",
                                 "steps_per_s_partial": sp.get("steps_per_s_partial")}
    else:
        out["splat_standard"] = {"goal": goal, "result": f"not measured ({status('splat_standard')})"}
    dp = steps.get("depth", {})
    goal = "depth: at least 100 frames/s for the Small model at 518 px (predict(), batch 8: the standard preset's)"
    fps = dp.get("batches", {}).get("8", {}).get("predict_frames_per_s")
    if status("depth").startswith("ok") and fps is not None:
        out["depth"] = {"goal": goal, "figure": fps, "model_only_frames_per_s": dp["batches"]["8"].get("model_frames_per_s"),
                        "result": "met" if fps >= 100 else "not met"}
    else:
        out["depth"] = {"goal": goal, "result": f"not measured ({status('depth')})"}
    return out


def run_all(args: argparse.Namespace) -> int:
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out / LOG_FILE)
    budget = float(args.budget)
    only = set(filter(None, (args.only or "").split(",")))
    if only - set(STEP_NAMES):
        raise SystemExit(f"unknown step(s) {sorted(only - set(STEP_NAMES))}; steps are {', '.join(STEP_NAMES)}")
    limits = _parse_limits(args.limit or [])
    summary: dict[str, Any] = {
        "script": "bench/gpu/gpu_check.py", "started_at": _now(), "budget_s": budget,
        "carry": str(args.carry), "git_commit": _git_commit(),
        "note": ("every figure here was measured by this run on this machine; a step that could not run says "
                 "why and carries no figure (nothing is simulated)"),
        "steps": {},
    }
    t_start = time.monotonic()
    deadline = t_start + budget
    cuda = False
    gsplat_ok = False
    failed = []
    log(f"gpu_check: budget {budget:.0f} s, carry {args.carry}, out {out}, work {work}")
    for step in STEPS:
        if only and step.name not in only:
            result: dict[str, Any] = {"status": "skipped: not selected (--only)"}
        else:
            left = deadline - time.monotonic()
            limit = min(limits.get(step.name, step.limit_s), left)
            if step.needs_cuda and not cuda:
                result = {"status": "skipped: no CUDA"}
            elif step.needs_gsplat and cuda and not gsplat_ok:
                result = {"status": "skipped: no gsplat (" + summary["steps"].get("gsplat_build", {}).get(
                    "status", "gsplat_build not run") + ")"}
            elif limit < min(step.min_s, limits.get(step.name, step.min_s)):  # a limit given is taken as given
                result = {"status": f"skipped: out of time ({max(left, 0):.0f} s of the {budget:.0f} s budget left)"}
            else:
                log(f"--- {step.name}: {step.summary} (limit {limit:.0f} s)")
                result = run_child(step, limit, args, log)
        summary["steps"][step.name] = result
        status = str(result.get("status", ""))
        log(f"{step.name}: {status}")
        if step.name == "env":
            cuda = bool(result.get("cuda"))
        if step.name == "gsplat_build":
            gsplat_ok = status.startswith("ok")
        if status.startswith(("failed", "timed out")):
            failed.append(step.name)
        _write_summary(out, summary, t_start)
    summary["goals"] = goals(summary["steps"])
    summary["failed_steps"] = failed
    summary["finished_at"] = _now()
    _write_summary(out, summary, t_start)
    log(f"done in {time.monotonic() - t_start:.0f} s; failed steps: {', '.join(failed) or 'none'}")
    for name, g in summary["goals"].items():
        log(f"goal {name}: {g['result']}" + (f" (figure {g['figure']})" if "figure" in g else ""))
    log.close()
    return 1 if failed else 0


def _write_summary(out: Path, summary: dict[str, Any], t_start: float) -> None:
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(out / SUMMARY_FILE)


def _parse_limits(items: list[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in STEP_NAMES or not value:
            raise SystemExit(f"--limit takes STEP=SECONDS with a step of {', '.join(STEP_NAMES)}; got {item!r}")
        limits[name] = float(value)
    return limits


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_modified() -> list[str] | None:
    """The pipeline's source files that differ from the commit (the stages that made a workspace)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "batch_jobs", "functions"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.stdout.splitlines()] if out.returncode == 0 else None


# --- the child: one step -----------------------------------------------------------------------

@dataclass
class StepContext:
    carry: Path
    work: Path
    out: Path
    limit: float

    @property
    def site(self) -> Path:
        return self.work / "site"

    @property
    def ws(self) -> Path:
        return self.carry / "ws"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _no_cuda() -> dict[str, Any]:
    return {"status": "skipped: no CUDA"}


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run_text(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout or r.stderr).strip() or None


def _nvcc() -> str | None:
    """nvcc's path (on PATH, or under CUDA_HOME or /usr/local/cuda, then put on PATH)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and Path(home, "bin", "nvcc").is_file():
            os.environ["PATH"] = f"{Path(home, 'bin')}{os.pathsep}{os.environ.get('PATH', '')}"
            return str(Path(home, "bin", "nvcc"))
    return None


def step_env(c: StepContext) -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                       "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
    nvcc = _nvcc()
    info["nvcc"] = {"path": nvcc, "version": (_run_text([nvcc, "--version"]) or "").splitlines()[-1:]} if nvcc else None
    info["nvidia_smi"] = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"]) if shutil.which("nvidia-smi") else None
    info["packages"] = {d: _version(d) for d in (
        "numpy", "numba", "opencv-python-headless", "transformers", "safetensors", "torchvision", "pytest",
        "setuptools", "ninja", "gsplat", "pycolmap", "plyfile", "open3d", "open3d-cpu", "trimesh")}
    info["status"] = "ok"
    return info


def step_wheels(c: StepContext) -> dict[str, Any]:
    wheels = sorted((c.carry / "wheels").glob("*.whl"))
    if not wheels:
        return {"status": "skipped: no wheels carried", "wheels": []}
    names = [w.name for w in wheels]
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        unfit: list[str] = []
    else:
        supported = set(sys_tags())
        unfit = [w.name for w in wheels if not (parse_wheel_filename(w.name)[3] & supported)]
    if unfit:
        here = f"cp{sys.version_info.major}{sys.version_info.minor}"
        return {"status": f"skipped: carried wheels not for this Python ({here}): {', '.join(unfit)}", "wheels": names}
    c.site.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(c.site), *map(str, wheels)], check=True)
    return {"status": "ok", "wheels": names, "install_seconds": round(time.perf_counter() - t0, 2), "site": str(c.site)}


def step_carry(c: StepContext) -> dict[str, Any]:
    problems: list[str] = []
    facts: dict[str, Any] = {"bytes": _tree_bytes(c.carry) if c.carry.is_dir() else 0}
    if not c.carry.is_dir():
        return {"status": f"failed: no carry folder {c.carry} (bench/gpu/prepare.sh makes it)", **facts}
    manifest = c.carry / MANIFEST
    if manifest.is_file():
        facts["manifest"] = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"}
    else:
        problems.append(f"no {MANIFEST}")
    missing = [rel for rel in WS_REQUIRED if not (c.ws / rel).is_file()]
    if missing:
        problems.append("workspace lacks " + ", ".join(missing))
    images = sorted((c.ws / "sfm" / "images").glob("*.jpg"))
    facts["images"] = len(images)
    facts["gsplat_sdist"] = [p.name for p in sorted((c.carry / "sdist").glob("gsplat-*.tar.gz"))]
    facts["gsplat_wheel"] = [p.name for p in sorted((c.carry / "gsplat-wheel").glob("gsplat-*.whl"))]
    if not facts["gsplat_sdist"] and not facts["gsplat_wheel"]:
        problems.append("no gsplat sdist (sdist/gsplat-*.tar.gz) nor prebuilt wheel (gsplat-wheel/*.whl)")
    if not missing:
        try:
            problems += _check_model(c.ws, facts)
        except Exception as exc:  # the check reports; it never stops the run
            problems.append(f"the sparse model could not be read: {type(exc).__name__}: {exc}")
    return {"status": "ok" if not problems else "failed: " + "; ".join(problems), **facts}


def _check_model(ws: Path, facts: dict[str, Any]) -> list[str]:
    from batch_jobs.gaussians.camera import working_size
    from batch_jobs.sparse_model import read_sparse_model
    from core import stages
    from core.options import normalize_options

    request = json.loads((ws / "request.json").read_text())
    model = read_sparse_model(ws / "sfm" / "sparse" / "0")
    absent = [v.file for v in model.views if not (ws / "sfm" / "images" / v.file).is_file()]
    w, h = model.views[0].width, model.views[0].height
    facts.update({"request_options": request.get("options"), "views": len(model.views),
                  "points": int(model.points.shape[0]), "image_size": [w, h], "splat": {}})
    for preset in ("standard", "high"):
        p = stages.resolve("splat", normalize_options({"preset": preset}))
        tw, th, _ = working_size(w, h, int(p["max_long_side"]))
        facts["splat"][preset] = {"steps": p["steps"], "strategy": p["strategy"], "train_size": [tw, th]}
    return [f"{len(absent)} model images missing from sfm/images ({', '.join(absent[:3])})"] if absent else []


def _fresh_ws(c: StepContext, name: str) -> Path:
    """A writable copy of the carried workspace under WORK (the carry stays as it came)."""
    dest = c.work / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(c.ws, dest)
    return dest


@contextlib.contextmanager
def gpu_memory_lines(every: float = 5.0) -> Iterator[None]:
    """Print `GPUMEM <peak allocated> <peak reserved>` every few seconds (the parent keeps the last
    one when it has to stop the step), and once more at the end."""
    import torch

    stop = threading.Event()

    def line() -> None:  # one write, so other threads' output cannot split it
        sys.stdout.write(f"GPUMEM {torch.cuda.max_memory_allocated()} {torch.cuda.max_memory_reserved()}\n")
        sys.stdout.flush()

    def beat() -> None:
        while not stop.wait(every):
            line()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        line()


def _rate(fn: Callable[[], Any], sync: Callable[[], None], min_calls: int, min_seconds: float,
          max_seconds: float) -> tuple[float, int]:
    """Seconds per call of `fn` (two warm-up calls first), at least `min_calls` calls and
    `min_seconds`, stopping after `max_seconds`; GPU work is waited for before the clock stops."""
    for _ in range(2):
        fn()
    sync()
    calls = 0
    t0 = time.perf_counter()
    while calls < min_calls or (time.perf_counter() - t0 < min_seconds):
        fn()
        calls += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    sync()
    return (time.perf_counter() - t0) / calls, calls


def small_sized_depth_model(out_dir: Path, seed: int = 0) -> Path:
    """Save a Depth-Anything-V2-Small-sized model with random weights (and the stage's image
    processor and untrained marker) to `out_dir`: DINOv2 ViT-S/14 backbone (384 wide, 12 layers,
    6 heads, features from layers 3, 6, 9, 12) and the DPT head of the Small model (64 fusion
    channels, neck 48/96/192/384)."""
    import torch
    from transformers import DepthAnythingForDepthEstimation

    from batch_jobs.depth.model import build_untrained_model

    build_untrained_model(out_dir, seed=seed)  # the processor and the untrained marker, as the stage reads them
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(small_sized_config()).eval().save_pretrained(out_dir)
    return out_dir


def small_sized_config() -> Any:
    """Depth-Anything-V2-Small's configuration (depth-anything/Depth-Anything-V2-Small-hf)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                            image_size=518, patch_size=14, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                               reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[48, 96, 192, 384],
                               fusion_hidden_size=64, head_hidden_size=32, depth_estimation_type="relative")


def step_depth(c: StepContext) -> dict[str, Any]:
    if not _cuda():
        return _no_cuda()
    import cv2
    import torch

    from batch_jobs.depth.model import load_depth_model
    from batch_jobs.runner import run_stage

    t_end = time.monotonic() + c.limit - 15  # leave the stage run its share
    model_dir = small_sized_depth_model(c.work / "da2-small-random")
    dm = load_depth_model(str(model_dir), DEVICE, c.work)
    paths = sorted((c.ws / "sfm" / "images").glob("*.jpg"))
    if not paths:
        return {"status": "failed: no images in the carried workspace"}
    images = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
    result: dict[str, Any] = {
        "model": {"architecture": "Depth-Anything-V2-Small (DINOv2 ViT-S/14 + DPT head)",
                  "params": sum(p.numel() for p in dm.model.parameters()), "dtype": str(dm.dtype),
                  "untrained": dm.untrained, "note": RANDOM_WEIGHTS_NOTE},
        "input_size": DEPTH_INPUT, "image_size": [int(images[0].shape[1]), int(images[0].shape[0])],
        "gpu": torch.cuda.get_device_name(0), "batches": {}}
    sync = torch.cuda.synchronize
    with gpu_memory_lines():
        for bs in DEPTH_BATCHES:
            batch = [images[i % len(images)] for i in range(bs)]
            pixels = dm.processor(images=batch, return_tensors="pt", size={"height": DEPTH_INPUT, "width": DEPTH_INPUT})[
                "pixel_values"].to(DEVICE, dtype=dm.dtype)
            left = max(1.0, (t_end - time.monotonic()) / 8)

            def forward(px: torch.Tensor = pixels) -> Any:
                with torch.inference_mode():
                    return dm.model(pixel_values=px).predicted_depth

            per_fwd, n_fwd = _rate(forward, sync, 5, 1.0, left)
            per_call, n_calls = _rate(lambda b=batch: dm.predict(b, DEPTH_INPUT), sync, 2, 1.0, left)
            result["batches"][str(bs)] = {
                "model_input": list(pixels.shape), "model_frames_per_s": round(bs / per_fwd, 1), "model_calls": n_fwd,
                "predict_frames_per_s": round(bs / per_call, 1), "predict_calls": n_calls}
            print(f"depth batch {bs}: model {bs / per_fwd:.1f} frames/s, predict() {bs / per_call:.1f} frames/s "
                  f"(input {list(pixels.shape)})", flush=True)
        result["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated()
    result["what"] = ("model_frames_per_s: the network alone on tensors already on the GPU (fp16); "
                      "predict_frames_per_s: DepthModel.predict as the stage calls it (the image processor on "
                      "the CPU, the network, the upsampling to the image size, the copy back)")
    ws = _fresh_ws(c, "ws-depth")
    os.environ["DEPTH_MODEL"] = str(model_dir)
    t0 = time.perf_counter()
    res = run_stage("depth", str(ws), options={"preset": "standard"}, force=True)
    stage = {"status": res.status, "wall_s": round(time.perf_counter() - t0, 2)}
    if res.success:
        stage.update({k: res.success["metrics"].get(k) for k in ("n_images", "frames_per_s", "untrained_model", "device")})
        stage["timings"] = res.success.get("timings")
        stage["params"] = {k: res.success["params"].get(k) for k in ("batch_size", "input_size")}
    else:
        stage["error"] = res.error
    result["stage"] = stage
    result["status"] = "ok" if res.success else f"failed: the depth stage: {res.error}"
    return result


def _gsplat_probe(site: Path) -> tuple[bool, str]:
    """Does `import gsplat.csrc` (the compiled extension) work in a fresh process with `site`?"""
    code = "import torch, gsplat, gsplat.csrc; print(gsplat.__version__, gsplat.__file__)"
    try:
        r = subprocess.run([sys.executable, "-c", code], env=_child_env(site), capture_output=True, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        return False, "import timed out"
    if r.returncode == 0:
        return True, r.stdout.strip()
    errors = r.stderr.strip().splitlines()
    return False, errors[-1] if errors else f"exit code {r.returncode}"


def step_gsplat_build(c: StepContext) -> dict[str, Any]:
    if not _cuda():
        return _no_cuda()
    nvcc = _nvcc()
    result: dict[str, Any] = {"arch": GSPLAT_ARCH, "max_jobs": int(os.environ.get("GPU_CHECK_MAX_JOBS", "16"))}
    ok, where = _gsplat_probe(c.site)
    if ok:
        return {**result, "status": "ok", "source": f"already importable ({where})"}
    pip = [sys.executable, "-m", "pip"]
    c.site.mkdir(parents=True, exist_ok=True)
    prebuilt = sorted((c.carry / "gsplat-wheel").glob("gsplat-*.whl"))
    if prebuilt:
        t0 = time.perf_counter()
        subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", "--upgrade",
                        "--target", str(c.site), str(prebuilt[-1])], check=True)
        result.update({"source": f"carried wheel {prebuilt[-1].name}", "install_seconds": round(time.perf_counter() - t0, 2)})
    else:
        sdists = sorted((c.carry / "sdist").glob("gsplat-*.tar.gz"))
        if not sdists:
            return {**result, "status": "failed: no gsplat sdist or wheel in the carry"}
        if not nvcc:
            return {**result, "status": "failed: no nvcc (PATH, CUDA_HOME, /usr/local/cuda)"}
        result["nvcc"] = (_run_text([nvcc, "--version"]) or "").splitlines()[-1:]
        env = dict(os.environ, TORCH_CUDA_ARCH_LIST=GSPLAT_ARCH, MAX_JOBS=str(result["max_jobs"]))
        env.pop("BUILD_NO_CUDA", None)
        wheel_dir = c.work / "gsplat-wheel"
        shutil.rmtree(wheel_dir, ignore_errors=True)
        t0 = time.perf_counter()
        r = subprocess.run([*pip, "wheel", "-v", "--no-build-isolation", "--no-deps", "--no-index", "-w",
                            str(wheel_dir), str(sdists[-1])], env=env)
        result["build_seconds"] = round(time.perf_counter() - t0, 1)
        built = sorted(wheel_dir.glob("gsplat-*.whl"))
        if r.returncode or not built:
            return {**result, "status": f"failed: pip wheel exited {r.returncode} after {result['build_seconds']} s"}
        t0 = time.perf_counter()
        subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", "--upgrade",
                        "--target", str(c.site), str(built[0])], check=True)
        result.update({"source": f"built from {sdists[-1].name}", "install_seconds": round(time.perf_counter() - t0, 2),
                       "wheel": built[0].name, "wheel_bytes": built[0].stat().st_size})
        result.update(_to_out(built[0], c.out))  # carried next time (gsplat-wheel/), it saves the build
    ok, where = _gsplat_probe(c.site)
    result["import"] = where
    result["status"] = "ok" if ok else f"failed: gsplat.csrc does not import: {where}"
    return result


def _to_out(path: Path, out: Path, max_parts: int = 3) -> dict[str, Any]:
    """Copy `path` to OUT, in parts of at most 15 MiB when larger (a file comes back up to 16 MiB)."""
    size = path.stat().st_size
    if size <= OUT_FILE_LIMIT:
        shutil.copy2(path, out / path.name)
        return {"wheel_in_out": [path.name]}
    parts = -(-size // OUT_FILE_LIMIT)
    if parts > max_parts:
        return {"wheel_in_out": [], "wheel_not_returned": f"{size} bytes: more than {max_parts} parts"}
    names = []
    with path.open("rb") as fh:
        for i in range(parts):
            names.append(f"{path.name}.part{i}")
            (out / names[-1]).write_bytes(fh.read(OUT_FILE_LIMIT))
    return {"wheel_in_out": names, "rejoin": f"cat {path.name}.part* > {path.name}"}


def cuda_test_files() -> list[str]:
    """Test modules that hold `pytest.mark.cuda` tests (relative to the repository)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text(encoding="utf-8", errors="replace"))


def step_cuda_tests(c: StepContext) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    files = cuda_test_files()
    if not files:
        return {"status": "failed: no test file holds a pytest.mark.cuda test"}
    xml = c.work / "cuda_tests.xml"
    xml.unlink(missing_ok=True)
    rc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-rA",
                         f"--junitxml={xml}", *files], cwd=REPO).returncode
    tests: dict[str, str] = {}
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            kind = next((ch.tag for ch in case if ch.tag in ("failure", "error", "skipped")), "passed")
            tests[f"{case.get('classname')}::{case.get('name')}"] = kind
        shutil.copy2(xml, c.out / xml.name)
    counts = {k: sum(1 for v in tests.values() if v == k) for k in ("passed", "failure", "error", "skipped")}
    result: dict[str, Any] = {"files": files, "pytest_exit": rc, "counts": counts, "tests": tests}
    if not tests:
        result["status"] = f"failed: pytest exited {rc} and reported no test"
    elif not _cuda():
        result["status"] = ("skipped: no CUDA" if counts["skipped"] == len(tests)
                            else "failed: without CUDA, cuda tests did not all skip themselves")
    elif counts["failure"] or counts["error"]:
        result["status"] = f"failed: {counts['failure']} failed, {counts['error']} errors of {len(tests)}"
    elif not counts["passed"]:
        result["status"] = "failed: every cuda test skipped itself on a CUDA machine"
    else:
        result["status"] = "ok"
    return result


def step_parity(c: StepContext) -> dict[str, Any]:
    if not _cuda():
        return _no_cuda()
    sys.path.insert(0, str(REPO / "tests" / "batch_jobs"))
    import raster_parity as rp

    result: dict[str, Any] = {"measure": "max |ours - gsplat| / max |gsplat| per tensor", "rasterizer": {}}
    for n, w, h, ch in ((400, 67, 45, 3), (400, 67, 45, 4), (3000, 160, 120, 3), (20000, 640, 480, 3)):
        errors = rp.rasterizer_parity(rp.random_2d(n, w, h, seed=n + ch, channels=ch), w, h)
        result["rasterizer"][f"{n}g_{w}x{h}_{ch}ch"] = errors
        print(f"rasterizer {n} Gaussians {w}x{h} {ch} channels: worst {max(errors.values()):.3g} {errors}", flush=True)
    result["render"] = rp.render_parity()
    result["rasterizer_max_rel"] = max(max(e.values()) for e in result["rasterizer"].values())
    result["render_max_rel"] = max(result["render"].values())
    result["status"] = "ok"
    return result


def _splat(c: StepContext, preset: str) -> dict[str, Any]:
    if not _cuda():
        return _no_cuda()
    import torch

    from batch_jobs.runner import run_stage

    ws = _fresh_ws(c, f"ws-{preset}")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with gpu_memory_lines():
        res = run_stage("splat", str(ws), options={"preset": preset}, force=True)
    wall = round(time.perf_counter() - t0, 2)
    result: dict[str, Any] = {"preset": preset, "gpu": torch.cuda.get_device_name(0), "wall_s": wall,
                              "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(),
                              "peak_gpu_mem_reserved_bytes": torch.cuda.max_memory_reserved()}
    if not res.success:
        return {**result, "status": f"failed: {res.error}"}
    report = json.loads((ws / "splat" / "report.json").read_text())
    keep = ("steps", "steps_per_s", "train_seconds", "gaussians", "peak_gaussians", "heldout_psnr", "heldout_ssim",
            "train_psnr", "n_train_views", "n_test_views", "resolution", "strategy", "sh_degree", "depth_loss",
            "initial_gaussians", "renderer", "device")
    result.update({k: report.get(k) for k in keep})
    result["stage_wall_s"] = res.success["timings"].get("total")
    result["timings"] = res.success["timings"]
    long_side = max(report.get("resolution") or [0])
    if preset == "high" and long_side < 1920:
        result["resolution_note"] = (f"the carried images are {long_side} px on the long side (prepared with the "
                                     "standard preset), so high trained at that size, not at its 1920")
    if not report.get("depth_loss"):
        result["depth_loss_note"] = ("trained without the depth loss: the carried workspace has no depth maps "
                                     "(the only depth model here has random weights)")
    preview = ws / "splat" / "preview.png"
    if preset == "standard" and preview.is_file() and preview.stat().st_size <= OUT_FILE_LIMIT:
        shutil.copy2(preview, c.out / f"splat_{preset}_preview.png")
    result["status"] = "ok"
    return result


def step_splat_standard(c: StepContext) -> dict[str, Any]:
    return _splat(c, "standard")


def step_splat_high(c: StepContext) -> dict[str, Any]:
    return _splat(c, "high")


def step_mesh(c: StepContext) -> dict[str, Any]:
    if not _cuda():
        return _no_cuda()
    import numpy as np
    import torch

    from batch_jobs.gaussians import ply
    from batch_jobs.gaussians.camera import view_from_sparse
    from batch_jobs.gaussians.params import from_arrays, init_params, sh_degree_of, to_arrays
    from batch_jobs.gaussians.render import render
    from batch_jobs.runner import run_stage
    from batch_jobs.sparse_model import read_sparse_model
    from core import stages
    from core.options import normalize_options

    ws = c.work / "ws-standard"
    trained = (ws / "splat" / "_SUCCESS.json").is_file()
    has_open3d = importlib.util.find_spec("open3d") is not None
    if trained and has_open3d:  # the whole stage: renders on the GPU, open3d's TSDF on the CPU
        t0 = time.perf_counter()
        res = run_stage("mesh", str(ws), options={"preset": "standard"}, force=True)
        if not res.success:
            return {"status": f"failed: {res.error}", "wall_s": round(time.perf_counter() - t0, 2)}
        return {"status": "ok", "what": "the whole mesh stage", "wall_s": round(time.perf_counter() - t0, 2),
                "metrics": res.success["metrics"], "timings": res.success["timings"]}
    # The stage's GPU share alone: the expected depth and opacity of every view, rendered as mesh.run does.
    params_mesh = stages.resolve("mesh", normalize_options({"preset": "standard"}))
    model = read_sparse_model(c.ws / "sfm" / "sparse" / "0")
    t0 = time.perf_counter()
    if trained:
        arrays = ply.read_ply(ws / "splat" / "point_cloud.ply")
        source = "the splat_standard step's trained Gaussians"
    else:
        arrays = to_arrays(init_params(model.points, model.colors, 3))
        source = "Gaussians initialised from the SfM points (no trained splat: splat_standard did not finish)"
    params = from_arrays(arrays, device=DEVICE)
    load_s = time.perf_counter() - t0
    sh = sh_degree_of(params)
    views = [view_from_sparse(sv, int(params_mesh["max_long_side"])) for sv in model.views]

    def render_all() -> float:
        covered = []
        for v in views:
            with torch.no_grad():
                out = render(params, v, sh, with_depth=True)
            depth = out.depth.detach().cpu().numpy().astype(np.float32)
            alpha = out.alpha[..., 0].detach().cpu().numpy()
            covered.append(float(((alpha >= 0.5) & (depth > 0)).mean()))
        return float(np.mean(covered))

    torch.cuda.reset_peak_memory_stats()
    render_all()  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    covered = render_all()
    torch.cuda.synchronize()
    render_s = time.perf_counter() - t0
    fusion = ("not run: open3d does not import here (its open3d-cpu wheel is about 100 MiB, over the 64 MiB carry); "
              "the fusion is CPU-only in our code (batch_jobs/mesh/tsdf.py uses open3d on CPU:0)") if not has_open3d else \
        "not run: no trained splat to mesh"
    return {"status": "ok", "what": "the mesh stage's GPU share: depth + opacity renders of every view",
            "source": source, "gaussians": int(params["means"].shape[0]), "views": len(views),
            "render_size": [views[0].width, views[0].height], "load_seconds": round(load_s, 3),
            "render_seconds": round(render_s, 3), "render_ms_per_view": round(1000 * render_s / len(views), 2),
            "mean_covered_fraction": round(covered, 4), "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(),
            "fusion": fusion}


STEP_FUNCS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "env": step_env, "wheels": step_wheels, "carry": step_carry, "depth": step_depth,
    "gsplat_build": step_gsplat_build, "cuda_tests": step_cuda_tests, "parity": step_parity,
    "splat_standard": step_splat_standard, "mesh": step_mesh, "splat_high": step_splat_high,
}


def run_step(args: argparse.Namespace) -> int:
    c = StepContext(carry=Path(args.carry), work=Path(args.work), out=Path(args.out), limit=float(args.limit))
    try:
        result = STEP_FUNCS[args.name](c)
    except Exception as exc:
        traceback.print_exc()
        result = {"status": f"failed: {type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))
    return 0


# --- here: the workspace, the carry folder --------------------------------------------------------

def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def pack(workspace: Path, carry: Path, scene: str = "", preset: str = "",
         code: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy what the splat, depth and mesh stages read from `workspace` to `carry/ws` (the
    request, sfm's marker and report, the sparse model, the undistorted images) and write
    `carry/MANIFEST.json`; `code` says which code made the workspace, when known."""
    workspace, carry = Path(workspace), Path(carry)
    missing = [rel for rel in WS_REQUIRED if not (workspace / rel).is_file()]
    if missing:
        raise SystemExit(f"{workspace} is not a workspace with sfm outputs: no {', '.join(missing)}")
    dest = carry / "ws"
    shutil.rmtree(dest, ignore_errors=True)
    files = ["request.json", "sfm/_SUCCESS.json", "sfm/report.json"]
    files += [str(p.relative_to(workspace)) for p in sorted((workspace / "sfm" / "sparse" / "0").iterdir()) if p.is_file()]
    files += [str(p.relative_to(workspace)) for p in sorted((workspace / "sfm" / "images").glob("*.jpg"))]
    copied = []
    for rel in files:
        src = workspace / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            copied.append(rel)
    request = json.loads((workspace / "request.json").read_text())
    manifest = {"scene": scene or request.get("request_id", ""), "preset": preset or (request.get("options") or {}).get(
                "preset", ""), "packed_at": _now(), "code": code or {"commit": None, "note": "the code that made the workspace is unknown"},
                "workspace_bytes": _tree_bytes(dest), "files": copied}
    (carry / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def prepare(scene: str, datasets: Path, carry: Path, preset: str, keep: Path | None = None) -> dict[str, Any]:
    """Run the real `frames` and `sfm` stages on `datasets/scene/images`, then `pack` the workspace."""
    from batch_jobs.runner import run_stage

    os.environ.setdefault("SPLATPIPE_STATUS_STORE", "log")
    images = datasets / scene / "images"
    if not images.is_dir():
        raise SystemExit(f"no dataset images at {images}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-ws-") as tmp:
        ws = keep or Path(tmp) / "ws"
        ws.mkdir(parents=True, exist_ok=True)
        (ws / "request.json").write_text(json.dumps({"request_id": f"gpu-check-{scene}", "input": str(images),
                                                     "options": {"preset": preset}}))
        for stage in ("frames", "sfm"):
            t0 = time.perf_counter()
            r = run_stage(stage, str(ws), force=True)
            print(f"{stage}: {r.status} in {time.perf_counter() - t0:.1f} s", flush=True)
            if r.exit_code:
                raise SystemExit(f"{stage} failed: {r.error}")
        return pack(ws, carry, scene, preset, code={"commit": _git_commit(), "modified": _git_modified()})


def travel_size(carry: Path) -> dict[str, Any]:
    """What a device call would carry: tracked files, untracked files git does not ignore, and `carry`."""
    def listed(*extra: str) -> list[Path]:
        out = subprocess.run(["git", "ls-files", "-z", *extra], cwd=REPO, capture_output=True, check=True).stdout
        return [REPO / p for p in out.decode().split("\0") if p]

    tracked = sum(p.stat().st_size for p in listed() if p.is_file())
    untracked = sum(p.stat().st_size for p in listed("--others", "--exclude-standard") if p.is_file())
    carried = _tree_bytes(carry) if carry.is_dir() else 0
    total = tracked + untracked + carried
    return {"tracked_bytes": tracked, "untracked_bytes": untracked, "carry_bytes": carried, "total_bytes": total,
            "limit_bytes": TRAVEL_LIMIT, "fits": total <= TRAVEL_LIMIT}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="every step, each in its own process and time limit (the GPU check)")
    r.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check")
    r.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    r.add_argument("--only", default="", help=f"comma-separated steps of {','.join(STEP_NAMES)}")
    r.add_argument("--limit", action="append", metavar="STEP=SECONDS", help="a step's own time limit")
    s = sub.add_parser("step", help="one step (run starts these)")
    s.add_argument("name", choices=STEP_NAMES)
    s.add_argument("--carry", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--result", type=Path, required=True)
    s.add_argument("--limit", type=float, default=60.0)
    p = sub.add_parser("prepare", help="here: frames + sfm on a dataset, packed into the carry folder")
    p.add_argument("--scene", default="fountain-P11")
    p.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    p.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    p.add_argument("--preset", default="standard")
    p.add_argument("--keep", type=Path, help="run the stages in this folder (kept) instead of a temporary one")
    k = sub.add_parser("pack", help="copy a prepared workspace's splat/depth/mesh inputs into the carry folder")
    k.add_argument("--workspace", type=Path, required=True)
    k.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    k.add_argument("--scene", default="")
    k.add_argument("--preset", default="")
    k.add_argument("--commit", help="the commit whose stages made the workspace (recorded in the manifest)")
    z = sub.add_parser("size", help="what a device call would carry, against its 64 MiB")
    z.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return run_all(args)
    if args.cmd == "step":
        return run_step(args)
    if args.cmd == "prepare":
        print(json.dumps({k: v for k, v in prepare(args.scene, args.datasets, args.carry, args.preset,
                                                   args.keep).items() if k != "files"}, indent=1))
        return 0
    if args.cmd == "pack":
        args.carry.mkdir(parents=True, exist_ok=True)
        code = {"commit": args.commit, "note": "given to pack"} if args.commit else None
        print(json.dumps({k: v for k, v in pack(args.workspace, args.carry, args.scene, args.preset, code).items()
                          if k != "files"}, indent=1))
        return 0
    size = travel_size(args.carry)
    print(json.dumps({**size, **{k.replace("bytes", "mib"): round(v / 2**20, 2) for k, v in size.items()
                                 if k.endswith("bytes")}}, indent=1))
    return 0 if size["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
