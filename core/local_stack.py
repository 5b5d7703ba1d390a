"""Where a running local stack describes itself, for the stack (emulator.stack writes it) and the
SDK (splatpipe.client finds the api there): `{run_dir}/stack.json` with its URLs and the PIDs of
its processes; it counts as running while every one of those processes is alive."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

STACK_DIR = Path(".splatpipe") / "stack"
"""The run folder, relative to the repository (or to a folder a client works in)."""
STATE_FILE = "stack.json"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = REPO / STACK_DIR


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def running_state(run_dir: Path = DEFAULT_RUN_DIR) -> dict[str, Any] | None:
    """`run_dir/stack.json` when it is there, readable and all its processes are alive."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
        pids = [int(p) for p in state["processes"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return state if pids and all(pid_alive(p) for p in pids) else None
