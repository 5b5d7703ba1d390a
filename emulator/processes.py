"""Local server processes: free ports on 127.0.0.1, readiness checks, PID files, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.local_stack import pid_alive

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return 200 <= resp.status < 500
        except Exception:
            return False

    return check


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL. Only this PID: we never kill by name."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass
class ManagedProcess:
    """A server we started: its PID, its PID file and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    pid_file: Path | None = None
    env: dict[str, str] | None = None  # what was set over os.environ (to start it again the same way)
    cwd: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()


def start_process(name: str, cmd: Sequence[str], run_dir: Path, *, env: Mapping[str, str] | None = None,
                  ready: Callable[[], bool] | None = None, timeout: float = 60.0,
                  cwd: Path | None = None) -> ManagedProcess:
    """Start `cmd`, log to `run_dir/{name}.log`, write `run_dir/{name}.pid`, wait until `ready()`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"{name}.log"
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                 cwd=str(cwd) if cwd else None, start_new_session=True)
    pid_file = run_dir / f"{name}.pid"
    pid_file.write_text(str(popen.pid))
    proc = ManagedProcess(name, popen, log_path, pid_file, dict(env) if env else None, cwd)
    if ready is not None:
        deadline = time.monotonic() + timeout
        while not ready():
            if popen.poll() is not None:
                proc.stop()
                raise RuntimeError(f"{name} exited with {popen.returncode} before it was ready:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                proc.stop()
                raise TimeoutError(f"{name} not ready after {timeout:.0f}s:\n{proc.log_tail()}")
            time.sleep(0.1)
    return proc


def stop_pid_file(pid_file: Path) -> bool:
    """Stop the process a PID file names and remove the file; False if it named none."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    stop_pid(pid)
    pid_file.unlink(missing_ok=True)
    return True
