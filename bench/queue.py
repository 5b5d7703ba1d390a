"""The request queue against rq, on one Redis in one run.

- ours, enqueue: what the functions do in Redis for a new request — a callback token, its
  SHA-256, the dedup fingerprint, and the enqueue script (record + dedup keys + token index +
  priority queue + counts + mirror outbox, atomically);
- ours, enqueue+next: that, then `GET /next`'s take script (priority pop + PROCESSING + lease);
- baseline, rq: `Queue.enqueue` of a trivial job (`math.sqrt(4)`), rq 's own bookkeeping.

One client, no pipelining, loopback. Throughput is operations per second over a run; latency is
per call (p50 / p99). Each measurement is the median of `--rounds` rounds, the rounds of
the contenders interleaved; Redis is flushed before each. Goals: our enqueue >= 2x rq's, and >= 5,000
enqueue+next pairs per second. A PING through the same client is measured too: a pair is two round
trips, so half the PING rate is the ceiling for any two-call queue on this machine.

    .venv/bin/python -m bench.queue [--n 5000] [--rounds 6] [--aof]
"""

from __future__ import annotations

import os
import sys

# As a script (`python bench/queue.py`) this folder would lead sys.path and this file would
# shadow the standard library's `queue`: drop it (`python -m bench.queue` never adds it).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from core.stages import ORDER
from emulator import services
from functions.config import Settings
from functions.intake import callback_token, dedup
from functions.intake.validation import NewRequest
from functions.queue_store import connection as redis_conn
from functions.queue_store.store import RequestQueue


@dataclass
class Result:
    name: str
    ops_per_s: float
    p50_us: float
    p99_us: float


def _one_round(name: str, op: Callable[[int], None], n: int, reset: Callable[[], None]) -> Result:
    reset()
    for i in range(min(200, n)):  # warm-up: connections, script cache, allocator
        op(-1 - i)
    reset()
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        a = time.perf_counter_ns()
        op(i)
        lat.append(time.perf_counter_ns() - a)
    wall = time.perf_counter() - t0
    lat.sort()
    return Result(name, n / wall, lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000)


def measure(ops: dict[str, Callable[[int], None]], n: int, reset: Callable[[], None], rounds: int) -> list[Result]:
    """Rounds interleave the contenders, so a burst of load from elsewhere hits them alike; the
    median round of each is reported."""
    runs: dict[str, list[Result]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(rounds):
        # Rotate the order: whatever one contender leaves behind (freed memory being purged, say)
        # falls on each of the others equally often.
        for name in names[r % len(names):] + names[: r % len(names)]:
            op = ops[name]
            runs[name].append(_one_round(name, op, n, reset))
            print(f"  round {r + 1}/{rounds} {name:<18} {runs[name][-1].ops_per_s:9.0f} ops/s", file=sys.stderr,
                  flush=True)
    out = []
    for results in runs.values():
        results.sort(key=lambda x: x.ops_per_s)
        out.append(results[len(results) // 2])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="operations per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--aof", action="store_true", help="Redis with AOF, fsync on every write (as the tests run it)")
    ap.add_argument("--pin", default="", help="CPU of this client and of redis-server, e.g. '0,1' (default: no pinning)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        svc = services.start_redis(Path(tmp), aof=args.aof, name="bench-redis")
        try:
            if args.pin:
                client_cpu, server_cpu = (int(x) for x in args.pin.split(","))
                os.sched_setaffinity(0, {client_cpu})
                os.sched_setaffinity(svc.process.pid, {server_cpu})
            url = svc.env["REDIS_URL"]
            ours_client = redis_conn.client(Settings(redis_url=url))  # exactly as the functions connect
            rq_client = redis.Redis.from_url(url)  # rq wants bytes
            q = RequestQueue(ours_client)
            options = {"preset": "standard"}
            stages = ORDER

            def enqueue(i: int) -> None:
                req = NewRequest(session_id="bench", input=f"gs://splatpipe-uploads/bench/{i}.mp4",
                                 priority=i % 10, options=options, stages=stages)
                _, sha = callback_token.new_token()
                fp = dedup.fingerprint(req.session_id, req.input, req.options, req.stages)
                q.enqueue(req, token_sha256=sha, dedup=[(fp, 3600)])

            def enqueue_next(i: int) -> None:
                enqueue(i)
                if q.take(3600) is None:
                    raise RuntimeError("take found nothing")

            from rq import Queue

            rq_queue = Queue("bench", connection=rq_client)

            def rq_enqueue(i: int) -> None:
                rq_queue.enqueue("math.sqrt", 4)

            def flush() -> None:
                ours_client.flushdb()
                ours_client.execute_command("MEMORY", "PURGE")
                gc.collect()
                time.sleep(0.2)  # let the server and the allocator settle

            print(f"Redis {ours_client.info('server')['redis_version']} on {url}, AOF "
                  f"{'on (fsync always)' if args.aof else 'off'}; n={args.n}, median of {args.rounds} rounds",
                  file=sys.stderr)
            def ping(i: int) -> None:
                ours_client.ping()

            rq_res, ours, pairs, floor = measure({"rq enqueue": rq_enqueue, "ours enqueue": enqueue,
                                                  "ours enqueue+next": enqueue_next, "PING (floor)": ping},
                                                 args.n, flush, args.rounds)
        finally:
            svc.stop()

    print()
    print(f"{'':<22} {'ops/s':>10} {'p50 µs':>9} {'p99 µs':>9}")
    for r in (rq_res, ours, pairs, floor):
        print(f"{r.name:<22} {r.ops_per_s:>10.0f} {r.p50_us:>9.0f} {r.p99_us:>9.0f}")
    ratio = ours.ops_per_s / rq_res.ops_per_s
    print()
    print(f"enqueue rate, ours / rq:           {ratio:5.2f}x   (goal >= 2x)  {'met' if ratio >= 2 else 'NOT met'}")
    print(f"enqueue p50 latency, rq / ours:    {rq_res.p50_us / ours.p50_us:5.2f}x")
    print(f"enqueue+next pairs per second:     {pairs.ops_per_s:5.0f}    (goal >= 5000)  "
          f"{'met' if pairs.ops_per_s >= 5000 else 'NOT met'}")
    print(f"enqueue+next pairs / rq enqueues:  {pairs.ops_per_s / rq_res.ops_per_s:5.2f}x")
    # A pair is two round trips; two PINGs through the same client are what no queue can beat here.
    ceiling = floor.ops_per_s / 2
    print(f"pairs / two-PING ceiling ({ceiling:.0f}/s):  {pairs.ops_per_s / ceiling:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
