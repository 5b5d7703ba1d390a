"""The glibc malloc settings for CPU torch: one set of values, and they reach the process itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from batch_jobs import cpu_malloc

REPO = Path(__file__).resolve().parent.parent


def _run_script(tmp_path: Path, last_line: str, env: dict[str, str], *args: str) -> str:
    """stdout of a script that says it booted, calls reexec_unless_set, then runs `last_line`."""
    script = tmp_path / "script.py"
    script.write_text(f"import os, sys; sys.path.insert(0, {str(REPO)!r})\n"
                      "from batch_jobs import cpu_malloc\n"
                      "os.write(1, b'booted\\n')\n"  # unbuffered: a re-executed script says it twice
                      "cpu_malloc.reexec_unless_set()\n"
                      f"{last_line}\n")
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_the_makefile_exports_the_same_values() -> None:
    exported = dict(re.findall(r"^export (MALLOC_\w+) \?= (\S+)$", (REPO / "Makefile").read_text(), re.M))
    assert exported == cpu_malloc.ENV


def test_a_script_started_without_them_runs_under_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in cpu_malloc.ENV}
    # /proc/self/environ is the environment the process was started with (what glibc read).
    out = _run_script(tmp_path, "print(sys.argv[1:], open('/proc/self/environ', 'rb').read().decode(errors='replace'))", env,
                      "--an-argument")
    assert out.splitlines().count("booted") == 2 and "['--an-argument']" in out  # re-executed, with its arguments
    started_with = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    assert {k: started_with.get(k) for k in cpu_malloc.ENV} == cpu_malloc.ENV


def test_values_already_set_are_kept(tmp_path: Path) -> None:
    env = {**os.environ, **cpu_malloc.ENV, "MALLOC_TOP_PAD_": "12345"}
    out = _run_script(tmp_path, "print(os.environ['MALLOC_TOP_PAD_'])", env)
    assert out.split() == ["booted", "12345"]  # not re-executed, the value kept
