"""What "acknowledged means on two machines" costs an accept, and what a record costs Redis.

1. The accept (functions.intake.accept: the enqueue script with its rate limit and dedup keys,
   then the durability step) against a primary redis-server with a replica attached, as
   Memorystore STANDARD_HA runs (asynchronous replication, no AOF): REDIS_REPLICAS_TO_ACK=0
   (answer at once) against 1 (WAIT for the replica on the enqueue's connection), interleaved in
   the same run at 1, 8 and 32 concurrent clients. On Google Cloud the replica is in another
   zone: add that round trip to the WAIT rows (this measures the mechanism, not the network).
2. Redis memory per record: N requests accepted, then finished as a real run leaves them (five
   stages with times and jobs, outputs, metrics), `used_memory` before and after; records per
   GiB, and how long a 1 GiB instance lasts at 10,000 requests a day with and without retention.

    .venv/bin/python bench/accept_durability.py [--requests 2000] [--records 5000]

Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this folder is sys.path[0]; bench/queue.py would shadow the stdlib's queue.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import redis

from bench.api_load import Result, _run
from core import stages
from emulator import services

CLIENTS = (1, 8, 32)
REQUESTS_PER_DAY = 10_000
GIB = 1024**3


def _services(url: str, replicas: int) -> Any:
    from functions.config import Settings
    from functions.context import build

    return build(Settings(redis_url=url, rate_limit_per_minute=100_000_000, redis_replicas_to_ack=replicas,
                          redis_ack_timeout_ms=1000, firestore_mirror=False))


def _accepting(svc: Any, tag: str) -> Any:
    from functions.intake import accept as intake
    from functions.intake.validation import new_request

    def one(c: int, i: int, _state: object) -> bool:
        req = new_request({"session_id": f"b-{tag}-{c}", "input": f"gs://{svc.settings.uploads_bucket}/b/{tag}/{c}/{i}.mp4"},
                          svc.settings.allowed_input_buckets)
        return intake.accept(svc, req, source="api", caller=f"ip:bench-{c}").created

    return one


def _finish(svc: Any, rid: str) -> None:
    """The updates a real run makes: each stage RUNNING then SUCCEEDED with its job and
    metrics, then COMPLETED with the outputs."""
    svc.queue.update(rid, {"state": "PROCESSING"}, 3600)
    for stage in stages.ORDER:
        svc.queue.update(rid, {"stage": stage, "stage_state": "RUNNING",
                               "batch_job": f"projects/p/locations/us-central1/jobs/sp-{stage}-{rid[:12]}"}, 3600)
        svc.queue.update(rid, {"stage": stage, "stage_state": "SUCCEEDED",
                               "metrics": {stage: {"seconds": 123.4, "images": 300, "registered": 298,
                                                   "psnr_db": 27.2, "gaussians": 812345}}}, 3600)
    outputs = {name: f"gs://splatpipe-data/jobs/{rid}/{path}" for name, path in (
        ("point_cloud.ply", "splat/point_cloud.ply"), ("scene.spz", "splat/scene.spz"),
        ("mesh.glb", "mesh/mesh.glb"), ("mesh.ply", "mesh/mesh.ply"), ("cameras.json", "sfm/cameras.json"))}
    svc.queue.update(rid, {"state": "COMPLETED", "outputs": outputs}, 3600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="accepts per row (1 client: a tenth)")
    ap.add_argument("--records", type=int, default=5000, help="records for the memory measurement")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="accept-durability-"))
    primary = services.start_redis(run_dir, aof=False, name="primary")
    replica = services.start_redis(run_dir, aof=False, name="replica")
    try:
        services.replicate(replica.port, primary.port)
        url = primary.env["REDIS_URL"]
        plain, waiting = _services(url, 0), _services(url, 1)
        print("| accept | clients | requests | requests/s | p50 ms | p99 ms | not created |\n|---|---|---|---|---|---|---|")
        results: dict[tuple[str, int], Result] = {}
        _run("warm-up", 8, 400, _accepting(plain, "warm"), lambda: None)
        for clients in CLIENTS:
            total = args.requests if clients > 1 else max(100, args.requests // 10)
            for name, svc in (("answer at once (REDIS_REPLICAS_TO_ACK=0)", plain),
                              ("WAIT for the replica (REDIS_REPLICAS_TO_ACK=1)", waiting)):
                res = _run(name, clients, total, _accepting(svc, f"{clients}-{name[:4]}-{time.monotonic_ns()}"),
                           lambda: None)
                results[(name[:4], clients)] = res
                print(res.row(), flush=True)
        print()
        for clients in CLIENTS:
            a, w = results[("answ", clients)], results[("WAIT", clients)]
            print(f"{clients:>2} clients: WAIT adds p50 {w.p50 - a.p50:+.2f} ms, p99 {w.p99 - a.p99:+.2f} ms; "
                  f"throughput ratio {w.rate / a.rate:.2f}")

        client = redis.Redis.from_url(url)
        client.flushall()
        mem = _services(url, 0)
        base = int(client.info("memory")["used_memory"])
        ids = []
        for i in range(args.records):
            one = _accepting(mem, "mem")
            one(0, i, None)
        ids = list(mem.queue.r.zrange(mem.queue.k_queue, 0, -1))
        queued = int(client.info("memory")["used_memory"])
        for rid in ids:
            mem.queue.r.zrem(mem.queue.k_queue, rid)
            _finish(mem, rid)
        finished = int(client.info("memory")["used_memory"])
        per_queued = (queued - base) / len(ids)
        per_finished = (finished - base) / len(ids)
        per_gib = GIB / per_finished
        print(f"\nmemory: {len(ids)} records; {per_queued:,.0f} bytes per QUEUED record, {per_finished:,.0f} bytes per "
              f"finished one (its keys included); {per_gib:,.0f} finished records per GiB")
        print(f"at {REQUESTS_PER_DAY:,} requests a day a 1 GiB instance holds {per_gib / REQUESTS_PER_DAY:,.0f} days of "
              f"records without retention; with 7 days' retention it holds {7 * REQUESTS_PER_DAY * per_finished / GIB:.2f} GiB "
              f"of records in steady state ({7 * REQUESTS_PER_DAY * per_finished / GIB * 100:.0f} % of 1 GiB)")
    finally:
        replica.stop()
        primary.stop()
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
