"""The stage runner: what every stage shares (docs/contracts.md, "Stage runner").

`python -m batch_jobs run STAGE --workspace URI [--request-id ID] [--options JSON]`

For a stage it: reads `{workspace}/request.json`, resolves the options into the stage's
parameters, fingerprints its inputs (the request's input for `frames`, the `_SUCCESS.json` of
the stages it reads otherwise: `upstream` and, when they ran, `optional_upstream` in the stage
registry, core.stages), skips the stage when `{stage}/_SUCCESS.json` matches, else checks
that a stage given a GPU can use it, clears `{workspace}/{stage}/`, runs the stage module with a
progress reporter, uploads what it wrote, and writes `_SUCCESS.json` last. A failure writes
`{stage}/_ERROR.json` and the error to the status store, and exits non-zero (EXIT_BAD_INPUT when
a retry cannot help).

A stage module `batch_jobs.{stage}.stage` defines:
    VERSION: int                   bump when the outputs change for the same inputs
    def run(ctx: StageContext) -> dict   # metrics, recorded in _SUCCESS.json
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_jobs import storage
from batch_jobs.errors import BAD_REQUEST, INPUT_NOT_FOUND, INTERNAL, MISSING_INPUT, NO_CUDA, StageError
from batch_jobs.progress import ProgressReporter, default_sinks
from core import record as jobrecord
from core import stages
from core.batch_task import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRYABLE, GPUS_ENV
from core.options import OptionsError, normalize_options
from core.workspace import CHECKPOINTS, ERROR_FILE, REQUEST_FILE, SUCCESS_FILE

log = logging.getLogger("batch_jobs.runner")


@dataclass
class StageContext:
    """What a stage gets: where to read, where to write, its parameters, progress."""

    stage: str
    workspace: str  # gs://bucket/jobs/{id} or a local directory
    request: dict[str, Any]
    options: dict[str, Any]  # normalised request options
    params: dict[str, Any]  # this stage's parameters (preset + overrides)
    out_dir: Path  # local folder; everything here becomes {workspace}/{stage}/
    work_root: Path  # local scratch for downloads of inputs
    progress: ProgressReporter
    timings: dict[str, float] = field(default_factory=dict)
    key_digest: str = ""  # the stage's inputs and parameters (docs/contracts.md, "Stage markers")
    # What went wrong without failing the stage ({code, message, stage}); in _SUCCESS.json, and the
    # workflow adds them to the request's warnings (docs/contracts.md, "Stage markers").
    warnings: list[dict[str, str]] = field(default_factory=list)

    def warn(self, code: str, message: str) -> None:
        self.warnings.append({"code": code, "message": message, "stage": self.stage})

    @property
    def request_id(self) -> str | None:
        return self.request.get("request_id")

    @property
    def input_uri(self) -> str:
        return str(self.request["input"])

    def stage_uri(self, stage: str, *parts: str) -> str:
        return storage.join(self.workspace, stage, *parts)

    def checkpoint_uri(self) -> str:
        """Where this stage keeps its resumable state while it runs (core.workspace.CHECKPOINTS)."""
        return storage.join(self.workspace, CHECKPOINTS, self.stage)

    def write_report(self, report: Mapping[str, Any], *, failed: bool = False) -> None:
        """`{stage}/report.json`, the one writer of every stage's report: with the outputs, or
        for a failed run (which uploads nothing else) straight to the workspace."""
        uri = self.stage_uri(self.stage, stages.REPORT_FILE) if failed else str(self.out_dir / stages.REPORT_FILE)
        storage.write_json(uri, report)

    def input_dir(self, stage: str) -> Path:
        """A local folder holding `{workspace}/{stage}/` (downloaded once when remote)."""
        if not storage.is_gcs(self.workspace):
            return Path(self.workspace) / stage
        dest = self.work_root / "inputs" / stage
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)  # a stage that did not run (depth: false) is an empty folder
            storage.download_tree(self.stage_uri(stage), tmp)
            tmp.rename(dest)
        return dest

    @property
    def device(self) -> str:
        """`cuda` when a GPU is usable, else `cpu` (imports torch on first use). On a Batch VM
        given a GPU, CUDA was checked before the stage started (`require_gpus`)."""
        if os.environ.get("SPLATPIPE_DEVICE"):
            return os.environ["SPLATPIPE_DEVICE"]
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)


@dataclass
class StageResult:
    stage: str
    status: str  # "succeeded" | "skipped" | "failed"
    exit_code: int
    success: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def load_stage_module(stage: str) -> Any:
    if stage not in jobrecord.STAGES:
        raise StageError(BAD_REQUEST, f"unknown stage {stage!r}; stages are {', '.join(jobrecord.STAGES)}")
    return importlib.import_module(f"batch_jobs.{stage}.stage")


def read_request(workspace: str, request_id: str | None, cli_options: dict[str, Any] | None) -> dict[str, Any]:
    uri = storage.join(workspace, REQUEST_FILE)
    try:
        request = storage.read_json(uri)
    except FileNotFoundError as exc:
        raise StageError(BAD_REQUEST, f"{uri} does not exist: a workspace needs a request.json") from exc
    except json.JSONDecodeError as exc:
        raise StageError(BAD_REQUEST, f"{uri} is not valid JSON: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "NotFound":
            raise StageError(BAD_REQUEST, f"{uri} does not exist: a workspace needs a request.json") from exc
        raise
    if not isinstance(request, dict) or not isinstance(request.get("input"), str) or not request["input"]:
        raise StageError(BAD_REQUEST, f"{uri} must be an object with a non-empty 'input'")
    opts = dict(request.get("options") or {})
    opts.update(cli_options or {})
    try:
        request["options"] = normalize_options(opts)
    except OptionsError as exc:
        raise StageError(BAD_REQUEST, str(exc)) from exc
    if request_id:
        request["request_id"] = request_id
    return request


def input_fingerprints(stage: str, workspace: str, request: dict[str, Any]) -> dict[str, str]:
    """Digests of everything the stage reads: upstream _SUCCESS.json files, or the raw input."""
    fps: dict[str, str] = {}
    spec = stages.stage(stage)
    if not spec.upstream:
        if not storage.exists(request["input"]) and not storage.list_files(request["input"]):
            raise StageError(INPUT_NOT_FOUND, f"input {request['input']} does not exist")
        fps["input"] = storage.fingerprint(request["input"])
    for up in spec.upstream + spec.optional_upstream:
        uri = storage.join(workspace, up, SUCCESS_FILE)
        if not storage.exists(uri):
            if up in spec.optional_upstream:
                fps[up] = "absent"
                continue
            raise StageError(MISSING_INPUT, f"stage {up!r} has not completed: {uri} is missing",
                             retryable=False)
        fps[up] = hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    return fps


def require_gpus() -> None:
    """A stage whose Batch job was given GPUs (GPUS_ENV, set by functions.dispatch.batch_job) fails at
    once when CUDA cannot see them: a silent CPU run would bill GPU hours until it timed out."""
    raw = os.environ.get(GPUS_ENV, "").strip()
    wanted = int(raw) if raw.isdigit() else 0
    if wanted <= 0:
        return
    try:
        import torch

        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # a broken CUDA install is the same failure
        raise StageError(NO_CUDA, f"this VM was given {wanted} GPU(s) but CUDA is unusable: {exc}") from exc
    if seen < wanted:
        raise StageError(NO_CUDA, f"this VM was given {wanted} GPU(s) but CUDA sees {seen}: the NVIDIA driver "
                                  f"is not visible in the container (boot image / installGpuDrivers), or it is "
                                  f"too old for the image's CUDA {torch.version.cuda} ({_driver_cuda(torch)}; "
                                  f"GPU_DRIVER_VERSION pins one)")


def _driver_cuda(torch: Any) -> str:
    """The CUDA version the installed driver supports, as text ("no driver" when none loads)."""
    try:
        v = int(torch._C._cuda_getDriverVersion())  # e.g. 12080; 0 without a driver
    except Exception:
        return "the driver's CUDA version unknown"
    return f"the driver supports CUDA {v // 1000}.{v % 1000 // 10}" if v else "no driver"


def _existing_success(workspace: str, stage: str) -> dict[str, Any] | None:
    uri = storage.join(workspace, stage, SUCCESS_FILE)
    try:
        if storage.exists(uri):
            return storage.read_json(uri)
    except Exception:  # an unreadable marker means: run again
        return None
    return None


def run_stage(stage: str, workspace: str, request_id: str | None = None,
              options: dict[str, Any] | None = None, *, force: bool = False) -> StageResult:
    """Run one stage (docs/contracts.md, "Stage runner", "Stage markers"); never raises for stage failures."""
    workspace = workspace.rstrip("/") if storage.is_gcs(workspace) else str(Path(workspace).resolve())
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat()
    reporter = ProgressReporter(stage, default_sinks(stage, request_id))
    try:
        module = load_stage_module(stage)
        request = read_request(workspace, request_id, options)
        if not request_id:
            reporter = ProgressReporter(stage, default_sinks(stage, request.get("request_id")))
        try:
            params = stages.resolve(stage, request["options"])
        except ValueError as exc:
            raise StageError(BAD_REQUEST, str(exc)) from exc
        inputs = input_fingerprints(stage, workspace, request)
        version = int(getattr(module, "VERSION", 1))
        key = {"stage": stage, "version": version, "inputs": inputs, "params": params}
        prior = _existing_success(workspace, stage)
        if not force and prior and prior.get("key_digest") == _digest(key):
            log.info("%s: _SUCCESS.json matches inputs and options; skipping", stage)
            reporter.update(1.0, "skipped: already done with these inputs and options", force=True)
            return StageResult(stage, "skipped", EXIT_OK, success=prior)
        require_gpus()

        stage_uri = storage.join(workspace, stage)
        storage.delete_tree(stage_uri)
        with contextlib.ExitStack() as stack:
            work_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"splatpipe-{stage}-")))
            # Local workspaces are written in place; remote ones are staged and uploaded.
            out_dir = work_root / "out" if storage.is_gcs(workspace) else Path(stage_uri)
            out_dir.mkdir(parents=True, exist_ok=True)
            ctx = StageContext(stage=stage, workspace=workspace, request=request,
                               options=request["options"], params=params, out_dir=out_dir,
                               work_root=work_root, progress=reporter, key_digest=_digest(key))
            with reporter:
                metrics = module.run(ctx) or {}
                reporter.update(1.0, "writing outputs", force=True)
            outputs = {
                p.relative_to(out_dir).as_posix(): {"sha256": storage.file_sha256(p), "bytes": p.stat().st_size}
                for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name not in (SUCCESS_FILE, ERROR_FILE)
            }
            if storage.is_gcs(workspace):
                with ctx.timed("upload"):
                    storage.upload_tree(out_dir, stage_uri)
        success = {
            "stage": stage,
            "version": version,
            "request_id": request.get("request_id"),
            "inputs": inputs,
            "options": request["options"],
            "params": params,
            "key_digest": _digest(key),
            "outputs": outputs,
            "metrics": metrics,
            "warnings": ctx.warnings,
            "timings": {**ctx.timings, "total": round(time.perf_counter() - started, 3)},
            "started_at": started_at,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "device": os.environ.get("SPLATPIPE_DEVICE", ""),
        }
        storage.write_json(storage.join(stage_uri, SUCCESS_FILE), success)
        # The stage's resumable state is spent once it has succeeded (batch_jobs.gaussians.checkpoint);
        # failing to delete it does not undo the success.
        try:
            storage.delete_tree(storage.join(workspace, CHECKPOINTS, stage))
        except Exception as exc:
            log.warning("%s succeeded; its checkpoints were not deleted: %s", stage, exc)
        reporter.update(1.0, "done", force=True)
        return StageResult(stage, "succeeded", EXIT_OK, success=success)
    except StageError as exc:
        return _fail(stage, workspace, reporter, exc.to_dict(stage),
                     EXIT_RETRYABLE if exc.retryable else EXIT_BAD_INPUT)
    except Exception as exc:
        log.error("%s failed:\n%s", stage, traceback.format_exc())
        err = {"code": INTERNAL, "message": f"{type(exc).__name__}: {exc}", "stage": stage, "retryable": True}
        return _fail(stage, workspace, reporter, err, EXIT_RETRYABLE)


def _fail(stage: str, workspace: str, reporter: ProgressReporter, error: dict[str, Any],
          exit_code: int) -> StageResult:
    reporter.fail(error)
    try:
        storage.write_json(storage.join(workspace, stage, ERROR_FILE), error)
    except Exception as exc:  # the exit code and the status store still carry the failure
        log.warning("could not write %s: %s", ERROR_FILE, exc)
    return StageResult(stage, "failed", exit_code, error=error)
