"""The front door under load: the local stack's `api` (POST /trigger-reconstruction) and `queue`
(POST /enqueue) under 1, 8 and 32 concurrent clients, against the bare Redis enqueue (the same
scripts, called directly) in the same run; then the api at 32 clients with the Firestore emulator
stopped and with the storage emulator stopped, each against the api measured just before it.

    .venv/bin/python bench/api_load.py [--requests 2000] [--keep]

The stack is `python -m emulator up` as the demo starts it (functions-framework under gunicorn,
real Redis with AOF fsync on every write, the emulators), with MAX_CONCURRENT_JOBS=0 so dispatch
starts no workflow (only the front door is measured) and a rate limit no client reaches (the
enqueue script still counts it on every call). Each client is a thread with one keep-alive
connection; every request is a new request (distinct input), so none is deduplicated.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder is sys.path[0]; bench/queue.py would shadow the stdlib's queue.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from emulator.processes import stop_pid
from emulator.stack import Stack, StackConfig, StackInfo

CLIENTS = (1, 8, 32)
GOAL_RATE = 500.0
GOAL_P99_MS = 100.0
GOAL_ADDED_P99_MS = 50.0


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


class Result:
    def __init__(self, name: str, clients: int, lat_ms: list[float], seconds: float, bad: int) -> None:
        self.name, self.clients, self.seconds, self.bad = name, clients, seconds, bad
        self.lat = sorted(lat_ms)

    @property
    def rate(self) -> float:
        return len(self.lat) / self.seconds

    @property
    def p50(self) -> float:
        return _pct(self.lat, 0.50)

    @property
    def p99(self) -> float:
        return _pct(self.lat, 0.99)

    def row(self) -> str:
        return (f"| {self.name} | {self.clients} | {len(self.lat):,} | {self.rate:,.0f} | {self.p50:.1f} | "
                f"{self.p99:.1f} | {self.bad} |")


def _run(name: str, clients: int, total: int, one: Callable[[int, int, object], bool],
         setup: Callable[[], object]) -> Result:
    """`total` calls of `one(client, i, state)` spread over `clients` threads."""
    per = max(1, total // clients)
    lat: list[list[float]] = [[] for _ in range(clients)]
    bad = [0] * clients
    start = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        state = setup()
        start.wait()
        for i in range(per):
            t0 = time.perf_counter()
            ok = one(c, i, state)
            lat[c].append((time.perf_counter() - t0) * 1000)
            bad[c] += not ok
        getattr(state, "close", lambda: None)()

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return Result(name, clients, [x for row in lat for x in row], time.perf_counter() - t0, sum(bad))


def _http_caller(url: str, path: str, bucket: str, run_tag: str) -> tuple[Callable, Callable]:
    parts = urllib.parse.urlsplit(url)

    def setup() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def one(c: int, i: int, conn: http.client.HTTPConnection) -> bool:
        body = json.dumps({"session_id": f"load-{run_tag}-{c}", "input": f"gs://{bucket}/load/{run_tag}/{c}/{i}.mp4"})
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 202

    return setup, one


def _redis_caller(info: StackInfo, bucket: str, run_tag: str) -> tuple[Callable, Callable]:
    """What an accept costs in Redis alone: the same token, dedup keys and enqueue script (which
    counts the rate limit too)."""
    os.environ.update(info.env)
    from functions.config import Settings
    from functions.context import services
    from functions.intake import accept as intake
    from functions.intake import callback_token
    from functions.intake.validation import new_request

    svc = services(Settings.from_env())

    def one(c: int, i: int, _state: object) -> bool:
        req = new_request({"session_id": f"load-{run_tag}-{c}", "input": f"gs://{bucket}/load/{run_tag}/{c}/{i}.mp4"},
                          svc.settings.allowed_input_buckets)
        _, sha = callback_token.new_token()
        return svc.queue.enqueue(req, token_sha256=sha, dedup=intake.default_dedup(svc, req), source="api",
                                 counted=svc.limiter.call(f"ip:bench-{c}")).created

    return (lambda: None), one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="calls per row (1 client: a tenth)")
    ap.add_argument("--keep", action="store_true", help="leave the run directory")
    args = ap.parse_args()
    load_before = os.getloadavg()
    run_dir = Path(tempfile.mkdtemp(prefix="api-load-"))
    stack = Stack(StackConfig(run_dir=run_dir, max_concurrent_jobs=0, dispatch_every=60.0,
                              extra_env={"RATE_LIMIT_PER_MINUTE": "100000000"}))
    info = stack.up(log=lambda m: print(m, flush=True))
    results: list[Result] = []
    try:
        bucket = info.env["UPLOADS_BUCKET"]
        api_parts = urllib.parse.urlsplit(info.urls["api"])
        server = http.client.HTTPConnection(api_parts.hostname, api_parts.port, timeout=30)
        server.request("GET", "/status")
        print(f"api server: {server.getresponse().getheader('Server')}", flush=True)
        server.close()

        def rows(tag: str, clients_list: tuple[int, ...], targets: list[str]) -> None:
            for clients in clients_list:
                total = args.requests if clients > 1 else max(100, args.requests // 10)
                for target in targets:
                    run_tag = f"{tag.split()[0].lower()}-{target}-{clients}-{time.monotonic_ns()}"
                    if target == "redis":
                        setup, one = _redis_caller(info, bucket, run_tag)
                        name = "bare Redis enqueue (the enqueue script, rate limit included)"
                    elif target == "api":
                        setup, one = _http_caller(info.urls["api"], "/trigger-reconstruction", bucket, run_tag)
                        name = "api POST /trigger-reconstruction"
                    else:
                        setup, one = _http_caller(info.urls["queue"], "/enqueue", bucket, run_tag)
                        name = "queue POST /enqueue"
                    if tag != "up":
                        name += f" ({tag})"
                    results.append(_run(name, clients, total, one, setup))
                    print(results[-1].row(), flush=True)

        print("| target | clients | requests | requests/s | p50 ms | p99 ms | not 202 |\n|---|---|---|---|---|---|---|",
              flush=True)
        _run("warm-up", 8, 400, *reversed(_http_caller(info.urls["api"], "/trigger-reconstruction", bucket, "warm")))
        rows("up", CLIENTS, ["redis", "api", "queue"])
        # Each outage against the api measured just before it (the machine's load drifts), and the
        # stopped service started again afterwards.
        for process, label in (("firestore", "Firestore"), ("gcs", "storage")):
            rows(f"before {label} stopped", (32,), ["api"])
            stop_pid(json.loads((run_dir / "stack.json").read_text())["processes"][process])
            rows(f"{label} stopped", (32,), ["api"])
            stack.restart(process)
    finally:
        stack.down(quiet=True)
        if not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    load_after = os.getloadavg()

    def find(prefix: str, clients: int) -> Result:
        return next(r for r in results if r.name == prefix and r.clients == clients)

    api = "api POST /trigger-reconstruction"
    api32 = find(api, 32)
    redis32 = find("bare Redis enqueue (the enqueue script, rate limit included)", 32)
    print()
    print(f"api at 32 clients: {api32.rate:,.0f} accepted triggers/s (goal >= {GOAL_RATE:.0f}): "
          f"{'MET' if api32.rate >= GOAL_RATE else 'NOT MET'}; ratio to the bare Redis enqueue "
          f"{api32.rate / redis32.rate:.2f}")
    print(f"api p99 at 32 clients: {api32.p99:.1f} ms (goal <= {GOAL_P99_MS:.0f}): "
          f"{'MET' if api32.p99 <= GOAL_P99_MS else 'NOT MET'}")
    for label in ("Firestore", "storage"):
        base, down = find(f"{api} (before {label} stopped)", 32), find(f"{api} ({label} stopped)", 32)
        added = down.p99 - base.p99
        print(f"added p99 with {label} stopped: {added:+.1f} ms ({down.p99:.1f} against {base.p99:.1f} just "
              f"before; goal <= {GOAL_ADDED_P99_MS:.0f}): {'MET' if added <= GOAL_ADDED_P99_MS else 'NOT MET'}")
    print(f"load average before {load_before[0]:.2f} / {load_before[1]:.2f}, after {load_after[0]:.2f} / "
          f"{load_after[1]:.2f} (1 / 5 min; {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
