"""The local Cloud Batch runner: a Batch v1 Job JSON in, local processes out.

Each task runs its runnables in order as local processes: a container runnable's command is the
image's entrypoint (mapped to `python -m batch_jobs` of this installation) followed by its
`commands`; a script runnable runs in bash. A task's environment is this process's environment
(which carries the local stack's emulator variables), then the job's `environment.variables`,
then BATCH_JOB_ID, BATCH_JOB_UID, BATCH_TASK_INDEX, BATCH_TASK_COUNT, BATCH_TASK_RETRY_ATTEMPT.

As Cloud Batch does (https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs):
at most `parallelism` tasks at once; a failed attempt is retried up to `maxRetryCount` times
unless a lifecycle policy says FAIL_TASK for its exit code; job states go QUEUED → SCHEDULED →
RUNNING → SUCCEEDED | FAILED, each change a `statusEvents` entry, and every task attempt that
ends adds an event with `taskExecution.exitCode` and `taskState`
(https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs#StatusEvent).
Exit codes 50001-50006 are Batch's own
(https://cloud.google.com/batch/docs/troubleshooting#reserved-exit-codes); the runner produces
50005 for an attempt running past `maxRunDuration` (its process group is killed) and 50001 for a
simulated Spot preemption (`preempt`). A process killed by signal N ends with 128+N (as a
container would). `jobs.delete` (https://cloud.google.com/batch/docs/reference/rest/v1/
projects.locations.jobs/delete) puts the job in DELETION_IN_PROGRESS, kills its task processes
and then forgets it (a later get is a 404). This machine is the VM of every job and has no GPU:
a job's GPUS_ENV (functions.dispatch.batch_job) is replaced by the GPUs it has (`gpus`, 0), so a GPU stage
runs on the CPU here instead of failing its CUDA check. Each attempt's output is kept in
`{run_dir}/{job_id}/task{i}-attempt{n}.log`; a running one's PID in `….pid`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.batch_task import EXIT_MAX_RUN_DURATION, EXIT_PREEMPTED, GPUS_ENV
from emulator.batch.jobspec import InvalidJob, Runnable, TaskGroupSpec, parse_job

log = logging.getLogger("emulator.batch")

TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
KILL_GRACE_SECONDS = 5.0
DEFAULT_ENTRYPOINT = ("-m", "batch_jobs")  # after sys.executable: the job image's ENTRYPOINT


class BatchApiError(Exception):
    """An API error: HTTP code, canonical status, message."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class TaskAttempt:
    job: str
    task_index: int
    attempt: int
    log_path: Path
    pid: int | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "task_index": self.task_index, "attempt": self.attempt, "pid": self.pid,
                "log": str(self.log_path), "started": self.started, "ended": self.ended,
                "exit_code": self.exit_code}


class _Job:
    def __init__(self, name: str, job_id: str, body: dict[str, Any], spec: TaskGroupSpec, log_dir: Path) -> None:
        self.name = name
        self.job_id = job_id
        self.uid = f"{job_id[:40]}-{uuid.uuid4().hex[:8]}"
        self.body = body
        self.spec = spec
        self.log_dir = log_dir
        self.state = "QUEUED"
        self.created = _now()
        self.updated = self.created
        self.events: list[dict[str, Any]] = []
        self.task_states = ["PENDING"] * spec.task_count
        self.attempts: list[TaskAttempt] = []
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.deleted = threading.Event()
        self.done = threading.Event()
        self.preempt: set[int] = set()  # task indices whose running attempt is being preempted
        self.lock = threading.Lock()

    def event(self, description: str, **extra: Any) -> None:
        self.events.append({"type": "STATUS_CHANGED", "eventTime": _now(), "description": description, **extra})
        self.updated = _now()

    def set_state(self, state: str) -> None:
        with self.lock:
            if state == self.state:
                return
            self.event(f"Job state is set from {self.state} to {state} for job {self.name}.")
            self.state = state
            if state == "RUNNING" and self.started_at is None:
                self.started_at = time.time()
            if state in TERMINAL or state == "DELETION_IN_PROGRESS":
                self.ended_at = time.time()

    def resource(self) -> dict[str, Any]:
        with self.lock:
            counts: dict[str, str] = {}
            for s in self.task_states:
                counts[s] = str(int(counts.get(s, "0")) + 1)
            body = dict(self.body)
            groups = [dict(g) for g in body.get("taskGroups", [])]
            if groups:
                groups[0]["name"] = f"{self.name}/taskGroups/group0"
                groups[0].setdefault("taskCount", str(self.spec.task_count))
                groups[0].setdefault("parallelism", str(self.spec.parallelism))
            body["taskGroups"] = groups
            run = ((self.ended_at or time.time()) - self.started_at) if self.started_at else 0.0
            return {
                **body,
                "name": self.name,
                "uid": self.uid,
                "createTime": self.created,
                "updateTime": self.updated,
                "status": {
                    "state": self.state,
                    "statusEvents": [dict(e) for e in self.events],
                    "taskGroups": {"group0": {"counts": counts}},
                    "runDuration": f"{run:.3f}s",
                },
            }


class LocalBatch:
    """Cloud Batch for one machine: create, get, list, delete jobs; wait for one to end."""

    def __init__(self, run_dir: Path, *, env: Mapping[str, str] | None = None, python: str = sys.executable,
                 entrypoint: Sequence[str] = DEFAULT_ENTRYPOINT, cwd: Path | None = None, gpus: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.gpus = gpus
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.python = python
        self.entrypoint = list(entrypoint)
        self.cwd = cwd
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # --- API --------------------------------------------------------------------------------
    def create_job(self, parent: str, job_id: str | None, body: Any) -> dict[str, Any]:
        job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
        try:
            spec = parse_job(parent, job_id, body)
        except InvalidJob as exc:
            raise BatchApiError(400, "INVALID_ARGUMENT", str(exc)) from None
        name = f"{parent}/jobs/{job_id}"
        with self._lock:
            if name in self._jobs:
                raise BatchApiError(409, "ALREADY_EXISTS", f"Job {name} already exists")
            job = _Job(name, job_id, body, spec, self.run_dir / job_id)
            self._jobs[name] = job
        job.event(f"Job state is set to QUEUED for job {name}.")
        threading.Thread(target=self._run_job, args=(job,), name=f"batch-{job_id}", daemon=True).start()
        return job.resource()

    def get_job(self, name: str) -> dict[str, Any]:
        return self._job(name).resource()

    def list_jobs(self, parent: str) -> list[dict[str, Any]]:
        with self._lock:
            jobs = [j for n, j in self._jobs.items() if n.startswith(parent.rstrip("/") + "/jobs/")]
        return [j.resource() for j in jobs]

    def delete_job(self, name: str) -> dict[str, Any]:
        """Stop the job's processes and forget it (as jobs.delete; the logs stay on disk)."""
        job = self._job(name)
        job.deleted.set()
        if job.state not in TERMINAL:
            job.set_state("DELETION_IN_PROGRESS")
        self._kill_running(job)
        job.done.wait(KILL_GRACE_SECONDS + 5)
        with self._lock:
            self._jobs.pop(name, None)
        return {"name": name, "done": True}

    def wait_job(self, name: str, timeout: float | None = None, cancel: threading.Event | None = None,
                 poll: float = 0.2) -> dict[str, Any]:
        """Block until the job ends; returns its resource (state SUCCEEDED/FAILED, or not yet on timeout)."""
        job = self._job(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.done.wait(poll):
            if cancel is not None and cancel.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return job.resource()

    def preempt(self, name: str) -> int:
        """Simulate a Spot preemption: the job's running attempts end with exit code 50001."""
        job = self._job(name)
        with job.lock:
            job.preempt.update(job.running)
        return self._kill_running(job)

    def processes(self) -> list[dict[str, Any]]:
        """The task attempts running now, with their PIDs (local only)."""
        with self._lock:
            jobs = list(self._jobs.values())
        out = []
        for j in jobs:
            with j.lock:
                out += [a.to_dict() for a in j.attempts if a.ended is None and a.pid is not None]
        return out

    def attempts(self, name: str) -> list[dict[str, Any]]:
        job = self._job(name)
        with job.lock:
            return [a.to_dict() for a in job.attempts]

    def shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.deleted.set()
            self._kill_running(j)

    # --- running ----------------------------------------------------------------------------
    def _job(self, name: str) -> _Job:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise BatchApiError(404, "NOT_FOUND", f"Job {name} not found")
        return job

    def _run_job(self, job: _Job) -> None:
        try:
            job.log_dir.mkdir(parents=True, exist_ok=True)
            job.set_state("SCHEDULED")
            failed = threading.Event()

            def run_task(index: int) -> bool:
                if failed.is_set() or job.deleted.is_set():
                    return False
                ok = self._run_task(job, index)
                if not ok:
                    failed.set()
                return ok

            with ThreadPoolExecutor(max_workers=job.spec.parallelism, thread_name_prefix=f"task-{job.job_id}") as pool:
                results = list(pool.map(run_task, range(job.spec.task_count)))
            if job.deleted.is_set():
                return
            job.set_state("SUCCEEDED" if all(results) else "FAILED")
        except Exception as exc:  # a bug here must still end the job, or the workflow waits forever
            log.exception("local Batch job %s crashed", job.name)
            job.event(f"local runner error: {exc}")
            job.set_state("FAILED")
        finally:
            job.done.set()

    def _task_state(self, job: _Job, index: int, state: str, exit_code: int | None = None, where: str = "") -> None:
        with job.lock:
            old = job.task_states[index]
            job.task_states[index] = state
            desc = f"Task state is updated from {old} to {state} on {where or 'zones/local/instances/localhost'}"
            extra: dict[str, Any] = {"taskState": state}
            if exit_code is not None:
                desc += f" with exit code {exit_code}"
                extra["taskExecution"] = {"exitCode": exit_code}
            job.event(desc + ".", **extra)

    def _run_task(self, job: _Job, index: int) -> bool:
        spec = job.spec
        attempt = 0
        while True:
            if job.deleted.is_set():
                return False
            code = self._run_attempt(job, index, attempt)
            if job.deleted.is_set():
                return False
            if code == 0:
                self._task_state(job, index, "SUCCEEDED", 0)
                return True
            action = spec.action_for(code)
            retries_left = attempt < spec.max_retry_count
            if action == "FAIL_TASK" or not retries_left:
                self._task_state(job, index, "FAILED", code)
                return False
            # RETRY_TASK, or no policy for this code: Batch retries while retries are left.
            self._task_state(job, index, "FAILED", code)
            with job.lock:
                job.event(f"Task {job.name}/taskGroups/group0/tasks/{index} will be retried "
                          f"(attempt {attempt + 1} of {spec.max_retry_count}) after exit code {code}.")
            attempt += 1

    def _command(self, r: Runnable) -> list[str]:
        if r.kind == "script":
            if r.spec.get("text"):
                return ["bash", "-c", str(r.spec["text"])]
            return ["bash", str(r.spec["path"])]
        entry = str(r.spec.get("entrypoint") or "").strip()
        if entry:
            head = shlex.split(entry)
            if os.path.basename(head[0]) in ("python", "python3"):
                head[0] = self.python
        else:
            head = [self.python, *self.entrypoint]
        return head + list(r.spec.get("commands") or [])

    def _env(self, job: _Job, index: int, attempt: int, r: Runnable) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(job.spec.env)
        env.update(r.env)
        env.update({
            "BATCH_JOB_ID": job.job_id,
            "BATCH_JOB_UID": job.uid,
            "BATCH_TASK_INDEX": str(index),
            "BATCH_TASK_COUNT": str(job.spec.task_count),
            "BATCH_TASK_RETRY_ATTEMPT": str(attempt),
        })
        if GPUS_ENV in env:
            env[GPUS_ENV] = str(self.gpus)
        return env

    def _run_attempt(self, job: _Job, index: int, attempt: int) -> int:
        spec = job.spec
        log_path = job.log_dir / f"task{index}-attempt{attempt}.log"
        pid_file = log_path.with_suffix(".pid")
        record = TaskAttempt(job.name, index, attempt, log_path)
        with job.lock:
            job.attempts.append(record)
        self._task_state(job, index, "ASSIGNED")
        job.set_state("RUNNING")
        self._task_state(job, index, "RUNNING")
        deadline = None if spec.max_run_duration is None else time.monotonic() + spec.max_run_duration
        background: list[subprocess.Popen[bytes]] = []
        code = 0
        try:
            with open(log_path, "ab") as logf:
                for r in spec.runnables:
                    if code != 0 and not r.always_run:
                        continue
                    if r.kind == "barrier":
                        continue  # one machine: every task is already at the barrier
                    cmd = self._command(r)
                    logf.write(f"$ {shlex.join(cmd)}\n".encode())
                    logf.flush()
                    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                            env=self._env(job, index, attempt, r),
                                            cwd=str(self.cwd) if self.cwd else None, start_new_session=True)
                    pid_file.write_text(str(proc.pid))  # `emulator down` stops what is left
                    with job.lock:
                        record.pid = proc.pid
                        job.running[index] = proc
                    if r.background:
                        background.append(proc)
                        continue
                    rc = self._wait(job, index, proc, deadline, r.timeout)
                    if rc != 0 and not r.ignore_exit_status and code == 0:
                        code = rc
                    if rc in (EXIT_MAX_RUN_DURATION, EXIT_PREEMPTED):
                        code = rc
                        break
        finally:
            for proc in background:
                _kill_group(proc)
            pid_file.unlink(missing_ok=True)
            with job.lock:
                job.running.pop(index, None)
                record.ended = time.time()
                record.exit_code = code
        return code

    def _wait(self, job: _Job, index: int, proc: subprocess.Popen[bytes], deadline: float | None,
              runnable_timeout: float | None) -> int:
        local_deadline = None if runnable_timeout is None else time.monotonic() + runnable_timeout
        limits = [d for d in (deadline, local_deadline) if d is not None]
        end = min(limits) if limits else None
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if end is not None and time.monotonic() >= end:
                    _kill_group(proc)
                    return EXIT_MAX_RUN_DURATION
        with job.lock:
            preempted = index in job.preempt
            job.preempt.discard(index)
        if preempted:
            return EXIT_PREEMPTED
        # A process killed by a signal ends as a container would: 128 + the signal number.
        return 128 - rc if rc < 0 else rc

    def _kill_running(self, job: _Job) -> int:
        with job.lock:
            procs = list(job.running.values())
        for p in procs:
            _kill_group(p)
        return len(procs)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
