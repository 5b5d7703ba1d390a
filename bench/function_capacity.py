"""What one function instance carries: the `api` function (functions-framework under gunicorn, as
Cloud Run runs it) pinned to ONE CPU core (`taskset`: an instance with `available_cpu = 1`),
serving POST /trigger-reconstruction at request concurrency 1, 4, 8, 16 and 32 (gunicorn's THREADS
= the concurrency Cloud Run would send it, the clients on the other core), against a Redis with a
replica and REDIS_REPLICAS_TO_ACK=1 (Memorystore STANDARD_HA's accept). Per row: accepts/s, p50,
p99 and the instance's peak memory (VmHWM of its processes); the baseline is the first row
(concurrency 1: Cloud Functions' default, https://cloud.google.com/functions/docs/configuring/max-instances).
The capacity in terraform/functions.tf is chosen from these figures (docs/benchmarks.md).

    .venv/bin/python bench/function_capacity.py [--requests 2000]

Linux only (taskset, /proc). Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0]; bench/queue.py would shadow the stdlib's queue.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)


from bench.api_load import Result, _http_caller, _run
from emulator import services
from emulator.processes import free_port, start_process
from emulator.stack import http_answers

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 8, 16, 32)
GOAL_P99_MS = 100.0


def _peak_kib(pid: int) -> int:
    """VmHWM of a process and its children (gunicorn's master and worker), KiB."""
    total = 0
    pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="accepts per row (concurrency 1: a tenth)")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="fn-capacity-"))
    primary = services.start_redis(run_dir, aof=False, name="primary")
    replica = services.start_redis(run_dir, aof=False, name="replica")
    ff = Path(sys.executable).with_name("functions-framework")
    results: list[tuple[int, Result, int]] = []
    try:
        services.replicate(replica.port, primary.port)
        env = {**os.environ, "REDIS_URL": primary.env["REDIS_URL"], "REDIS_REPLICAS_TO_ACK": "1",
               "RATE_LIMIT_PER_MINUTE": "100000000", "FIRESTORE_MIRROR": "0", "UPLOADS_BUCKET": "uploads",
               "DISPATCH_URL": "", "GUNICORN_LOG_LEVEL": "error"}
        print("| concurrency (THREADS) | requests | accepts/s | p50 ms | p99 ms | not 202 | peak memory MiB |\n"
              "|---|---|---|---|---|---|---|", flush=True)
        for conc in CONCURRENCY:
            port = free_port()
            proc = start_process(
                f"api-{conc}", ["taskset", "-c", "0", str(ff), "--target", "api", "--source",
                                str(REPO / "functions" / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
                run_dir, env={**env, "THREADS": str(conc)}, ready=http_answers(f"http://127.0.0.1:{port}/"),
                timeout=60, cwd=REPO)
            try:
                url = f"http://127.0.0.1:{port}"
                setup, one = _http_caller(url, "/trigger-reconstruction", "uploads", f"warm-{conc}")
                _run("warm-up", conc, 200, one, setup)
                total = args.requests if conc > 1 else max(100, args.requests // 10)
                setup, one = _http_caller(url, "/trigger-reconstruction", "uploads", f"c{conc}-{time.monotonic_ns()}")
                res = _run(f"api at concurrency {conc}", conc, total, one, setup)
                peak = _peak_kib(proc.pid)
            finally:
                proc.stop()
            results.append((conc, res, peak))
            print(f"| {conc} | {len(res.lat):,} | {res.rate:,.0f} | {res.p50:.1f} | {res.p99:.1f} | {res.bad} | "
                  f"{peak / 1024:.0f} |", flush=True)
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    base = results[0][1]
    print()
    for conc, res, peak in results:
        met = "within" if res.p99 <= GOAL_P99_MS else "over"
        print(f"concurrency {conc:>2}: {res.rate / base.rate:.2f}x the accepts/s of concurrency 1, p99 {res.p99:.1f} ms "
              f"({met} the {GOAL_P99_MS:.0f} ms goal), peak {peak / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
