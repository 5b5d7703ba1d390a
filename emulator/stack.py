"""The local stack: every stand-in of the Google Cloud deployment, on 127.0.0.1, free ports.

`up` starts, in order: Redis; the Pub/Sub emulator and the topic fake-gcs-server publishes to;
fake-gcs-server (object-finalize events of the uploads bucket to that topic) and the two buckets;
the Firestore emulator; the local Workflows engine with the local Batch runner (serving
`workflows/reconstruct.yaml` with its user environment variables); the four functions
(functions-framework: `api`, `queue`, `on_upload`, `dispatch`); the event relay (local Eventarc
to `on_upload`); the scheduler (local Cloud Scheduler calling `dispatch`). Each process has a PID
file and a log in the run directory; `stack.json` there says what runs where and how each process
was started, so `restart(name)` can bring one back on the same port (fault tests kill one by PID
and restart it). `down` stops exactly the processes with PID files there (and any Batch task
processes still running).

The functions are served as Cloud Run serves them: the functions-framework command, which runs
gunicorn's threaded worker (one worker process, `THREADS` threads, 4 per CPU by default) when
gunicorn is installed, as it is here and in Cloud Run's Python runtime; never Flask's development
server.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from core.local_stack import DEFAULT_RUN_DIR, REPO, STATE_FILE, running_state
from emulator import services
from emulator.processes import (
    HOST,
    ManagedProcess,
    free_port,
    http_ok,
    pid_alive,
    port_open,
    start_process,
    stop_pid,
    stop_pid_file,
)
from functions.config import Settings

WORKFLOW_YAML = REPO / "workflows" / "reconstruct.yaml"
UNTRAINED_DEPTH_DIR = REPO / ".cache" / "demo" / "depth-untrained-v1"
TOPIC = "gcs-events"
SUBSCRIPTION = "eventarc-on-upload"
FUNCTIONS = (("queue", "http"), ("dispatch", "http"), ("api", "http"), ("on_upload", "cloudevent"))


# The stack's defaults are the functions' own (functions.config.Settings), stated there once.
_DEFAULTS = Settings()


@dataclass
class StackConfig:
    run_dir: Path = DEFAULT_RUN_DIR
    project: str = _DEFAULTS.project
    region: str = _DEFAULTS.region
    uploads_bucket: str = _DEFAULTS.uploads_bucket
    data_bucket: str = _DEFAULTS.data_bucket
    workflow_name: str = _DEFAULTS.workflow_name
    max_concurrent_jobs: int = _DEFAULTS.max_concurrent_jobs
    dispatch_every: float = 5.0
    depth_model: str | None = None  # None: $DEPTH_MODEL, else an untrained model built locally
    extra_env: dict[str, str] = field(default_factory=dict)  # more settings for the functions


@dataclass
class StackInfo:
    run_dir: Path
    urls: dict[str, str]
    env: dict[str, str]  # what a client of this stack sets (emulator hosts, buckets, …)
    processes: dict[str, int]
    depth_model: str
    depth_model_untrained: bool

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "urls": self.urls, "env": self.env, "processes": self.processes,
                "depth_model": self.depth_model, "depth_model_untrained": self.depth_model_untrained}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StackInfo:
        return cls(Path(d["run_dir"]), dict(d["urls"]), dict(d["env"]), {k: int(v) for k, v in d["processes"].items()},
                   str(d.get("depth_model", "")), bool(d.get("depth_model_untrained", False)))

    def alive(self) -> bool:
        return bool(self.processes) and all(pid_alive(p) for p in self.processes.values())

    def log(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"


@contextlib.contextmanager
def env_overrides(overrides: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def running(run_dir: Path = DEFAULT_RUN_DIR) -> StackInfo | None:
    """The stack described by `run_dir/stack.json` when all its processes are alive."""
    state = running_state(run_dir)
    try:
        return StackInfo.from_json(state) if state is not None else None
    except (ValueError, KeyError, TypeError):
        return None


def resolve_depth_model(configured: str | None) -> tuple[str, bool]:
    """(DEPTH_MODEL for the stages, whether it is an untrained stand-in)."""
    spec = configured or os.environ.get("DEPTH_MODEL", "")
    if spec:
        return spec, (Path(spec) / "splatpipe_untrained.json").exists()
    if not (UNTRAINED_DEPTH_DIR / "splatpipe_untrained.json").exists():
        # No weights can be downloaded here: a tiny random Depth-Anything model stands in.
        from batch_jobs.depth.model import build_untrained_model

        tmp = UNTRAINED_DEPTH_DIR.with_name(UNTRAINED_DEPTH_DIR.name + f".tmp{os.getpid()}")
        build_untrained_model(tmp)
        try:
            tmp.rename(UNTRAINED_DEPTH_DIR)
        except OSError:  # built by another process meanwhile
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(UNTRAINED_DEPTH_DIR), True


def http_answers(url: str) -> Any:
    """Ready when the server answers HTTP at all (a 404 for `/` included)."""
    def check() -> bool:
        try:
            requests.get(url, timeout=2)
            return True
        except requests.RequestException:
            return False

    return check


def _create_bucket(storage_host: str, project: str, name: str) -> None:
    resp = requests.post(f"{storage_host}/storage/v1/b", params={"project": project}, json={"name": name}, timeout=30)
    if resp.status_code not in (200, 409):
        raise RuntimeError(f"cannot create bucket {name}: HTTP {resp.status_code} {resp.text[:200]}")


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.run_dir = Path(self.config.run_dir)
        self.started: list[tuple[str, int]] = []
        self.commands: dict[str, dict[str, Any]] = {}

    def _track(self, proc: ManagedProcess, port: int | None = None) -> ManagedProcess:
        self.started.append((proc.name, proc.pid))
        self.commands[proc.name] = {"cmd": [str(a) for a in proc.popen.args], "env": proc.env or {},
                                    "cwd": str(proc.cwd) if proc.cwd else None, "port": port}
        return proc

    def restart(self, name: str, timeout: float = 90.0) -> int:
        """Start a stopped (or killed) process of the running stack again, as it was started, on the
        same port; its new PID (stack.json is updated)."""
        state_file = self.run_dir / STATE_FILE
        state = json.loads(state_file.read_text())
        spec = state["commands"][name]
        old = int(state["processes"][name])
        if pid_alive(old):
            stop_pid(old)
        port = spec.get("port")
        proc = start_process(name, spec["cmd"], self.run_dir, env=spec["env"] or None,
                             cwd=Path(spec["cwd"]) if spec.get("cwd") else None,
                             ready=(lambda: port_open(int(port))) if port else None, timeout=timeout)
        state["processes"][name] = proc.pid
        state_file.write_text(json.dumps(state, indent=2))
        return proc.pid

    def up(self, log: Any = print) -> StackInfo:
        """Start everything; on any failure stop what was started and raise."""
        existing = running(self.run_dir)
        if existing is not None:
            return existing
        self.down(quiet=True)  # leftovers of a stack that died
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._up(log)
        except BaseException:
            self.down(quiet=True)
            raise

    def _up(self, log: Any) -> StackInfo:
        c = self.config
        t0 = time.monotonic()
        depth_model, untrained = resolve_depth_model(c.depth_model)
        log("starting Redis, the Pub/Sub, Cloud Storage and Firestore emulators …")
        redis_svc = services.start_redis(self.run_dir)
        self._track(redis_svc.process, redis_svc.port)
        pubsub = services.start_pubsub(self.run_dir, project=c.project)
        self._track(pubsub.process, pubsub.port)
        with env_overrides({"PUBSUB_EMULATOR_HOST": pubsub.host}):
            from emulator.relay import ensure_topic_and_subscription

            ensure_topic_and_subscription(c.project, TOPIC, SUBSCRIPTION)
        gcs = services.start_gcs(self.run_dir, pubsub=pubsub, topic=TOPIC, project=c.project,
                                 event_bucket=c.uploads_bucket)
        self._track(gcs.process, gcs.port)
        storage_host = gcs.env["STORAGE_EMULATOR_HOST"]
        for bucket in (c.uploads_bucket, c.data_bucket):
            _create_bucket(storage_host, c.project, bucket)
        firestore = services.start_firestore(self.run_dir, project=c.project)
        self._track(firestore.process, firestore.port)

        ports = {name: free_port() for name in [*(n for n, _ in FUNCTIONS), "batch", "workflows"]}
        # HTTP URLs; the Workflows engine's Executions API is gRPC only (WORKFLOWS_EMULATOR_HOST).
        urls = {name: f"http://{HOST}:{port}" for name, port in ports.items() if name != "workflows"}
        urls["storage"] = storage_host
        env = {
            "GOOGLE_CLOUD_PROJECT": c.project,
            "REGION": c.region,
            "REDIS_URL": redis_svc.env["REDIS_URL"],
            "UPLOADS_BUCKET": c.uploads_bucket,
            "DATA_BUCKET": c.data_bucket,
            "WORKFLOW_NAME": c.workflow_name,
            "MAX_CONCURRENT_JOBS": str(c.max_concurrent_jobs),
            "STORAGE_EMULATOR_HOST": storage_host,
            "FIRESTORE_EMULATOR_HOST": firestore.host,
            "PUBSUB_EMULATOR_HOST": pubsub.host,
            "WORKFLOWS_EMULATOR_HOST": f"{HOST}:{ports['workflows']}",
            "BATCH_EMULATOR_HOST": f"{HOST}:{ports['batch']}",
            "DISPATCH_URL": urls["dispatch"],
            "LOCAL_LOG_DIR": str(self.run_dir),  # where every process below logs: the log route reads it
            "JOB_IMAGE": "local/splatpipe-job",
            "DEPTH_MODEL": depth_model,
            **c.extra_env,
        }
        # What the workflow reads; the Batch settings are dispatch's (functions/dispatch/batch_job.py).
        workflow_env = {"QUEUE_URL": urls["queue"], "DISPATCH_URL": urls["dispatch"]}
        env_file = self.run_dir / "workflow-env.json"
        env_file.write_text(json.dumps(workflow_env, indent=2))

        log("starting the local Workflows engine and Batch runner …")
        self._track(start_process(
            "workflows",
            [sys.executable, "-m", "emulator.workflows", "--port", str(ports["workflows"]), "--batch-port",
             str(ports["batch"]), "--run-dir", str(self.run_dir / "workflows"), "--workflow",
             f"{c.workflow_name}={WORKFLOW_YAML}", "--env-file", str(env_file), "--project", c.project,
             "--location", c.region],
            self.run_dir, env=env, ready=http_ok(f"{urls['batch']}/healthz"), timeout=60, cwd=REPO),
            ports["workflows"])

        log("starting the functions …")
        ff = Path(sys.executable).with_name("functions-framework")
        for name, signature in FUNCTIONS:
            cmd = [str(ff) if ff.exists() else "functions-framework", "--target", name, "--source",
                   str(REPO / "functions" / "main.py"), "--signature-type", signature, "--host", HOST,
                   "--port", str(ports[name])]
            self._track(start_process(f"fn-{name}", cmd, self.run_dir, env=env,
                                      ready=http_answers(f"{urls[name]}/"), timeout=90, cwd=REPO), ports[name])

        self._track(start_process(
            "relay", [sys.executable, "-m", "emulator.relay", "--project", c.project, "--topic", TOPIC,
                      "--subscription", SUBSCRIPTION, "--target", urls["on_upload"], "--bucket", c.uploads_bucket],
            self.run_dir, env=env, cwd=REPO))
        self._track(start_process(
            "scheduler", [sys.executable, "-m", "emulator.scheduler", "--url", urls["dispatch"],
                          "--every", str(c.dispatch_every)],
            self.run_dir, env=env, cwd=REPO))
        time.sleep(0.5)
        info = StackInfo(self.run_dir, urls, env, dict(self.started), depth_model, untrained)
        dead = [n for n, p in self.started if not pid_alive(p)]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited at start; see {self.run_dir}/<name>.log")
        (self.run_dir / STATE_FILE).write_text(json.dumps({**info.to_json(), "commands": self.commands}, indent=2))
        log(f"local stack up in {time.monotonic() - t0:.0f}s (run dir {self.run_dir})")
        return info

    def down(self, quiet: bool = False) -> list[str]:
        """Stop the processes this run dir's PID files name: newest first, Batch tasks last."""
        stopped: list[str] = []
        order: list[str] = []
        with contextlib.suppress(OSError, ValueError, KeyError):
            order = list(json.loads((self.run_dir / STATE_FILE).read_text())["processes"])
        pid_files = {p.stem: p for p in self.run_dir.glob("*.pid")} if self.run_dir.is_dir() else {}
        names = [n for n in reversed(order) if n in pid_files] + sorted(set(pid_files) - set(order))
        stopped += [name for name in names if stop_pid_file(pid_files[name])]
        if self.run_dir.is_dir():
            stopped += [f"batch task {p.parent.name}/{p.stem}"
                        for p in sorted(self.run_dir.glob("workflows/batch/*/*.pid")) if stop_pid_file(p)]
            (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        if stopped and not quiet:
            print(f"stopped: {', '.join(stopped)}")
        return stopped
