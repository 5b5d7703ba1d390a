"""Redis killed and restarted with AOF on (same port, same data directory): nothing is lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from fn_testlib import Buckets, FnApps, post_json, put_json

from emulator import services
from emulator.processes import port_open


def test_queue_and_records_survive_a_redis_crash(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                 tmp_path: Path, monkeypatch, services_now) -> None:
    svc_redis = services.start_redis(tmp_path, name="durable")
    try:
        monkeypatch.setenv("REDIS_URL", svc_redis.env["REDIS_URL"])
        ids = []
        tokens = {}
        for i, p in enumerate([4, 1, 4, 8, 1, 0]):
            out = post_json(fn_apps.queue, "/enqueue", {"session_id": "d", "priority": p,
                                                         "input": f"gs://{buckets.uploads}/d/{i}.mp4"}).get_json()
            ids.append(out["request_id"])
            tokens[out["request_id"]] = out["callback_token"]
        taken = fn_apps.queue.get("/next").get_json()["request_id"]
        assert taken == ids[5]
        put_json(fn_apps.queue, f"/status/{taken}", {"stage": "frames", "stage_state": "RUNNING",
                                                     "progress": {"frames": 0.5}})
        put_json(fn_apps.queue, f"/status/{ids[3]}", {"state": "CANCELLED"})
        queue = services_now().queue
        before = {rid: queue.get_raw(rid) for rid in ids}
        stats_before = fn_apps.queue.get("/queue").get_json()

        # SIGKILL: no shutdown hook, only what AOF (fsync on every write) already holds survives.
        os.kill(svc_redis.process.pid, signal.SIGKILL)
        svc_redis.process.popen.wait(10)
        assert not port_open(svc_redis.port)
        svc_redis = services.start_redis(tmp_path, port=svc_redis.port, name="durable")

        # The same function process, its pooled connections now dead, carries on.
        assert {rid: queue.get_raw(rid) for rid in ids} == before
        stats_after = fn_apps.queue.get("/queue").get_json()
        stats_before.pop("oldest_wait_seconds"), stats_after.pop("oldest_wait_seconds")
        assert stats_after == stats_before
        for rid, token in tokens.items():
            assert fn_apps.api.get(f"/status?callback_token={token}").get_json()["request_id"] == rid
        # Dedup memory survived too.
        dup = post_json(fn_apps.queue, "/enqueue", {"session_id": "d", "priority": 4,
                                                   "input": f"gs://{buckets.uploads}/d/0.mp4"})
        assert dup.status_code == 200 and dup.get_json()["request_id"] == ids[0]
        # Order is intact, and a request enqueued now still comes after earlier ones of its priority.
        late = post_json(fn_apps.queue, "/enqueue", {"session_id": "d", "priority": 1,
                                                    "input": f"gs://{buckets.uploads}/d/late.mp4"}).get_json()
        order = [fn_apps.queue.get("/next").get_json()["request_id"] for _ in range(5)]
        assert order == [ids[1], ids[4], late["request_id"], ids[0], ids[2]]
        assert fn_apps.queue.get("/next").status_code == 204
        # The lease of the request taken before the crash is still there.
        assert fn_apps.queue.get(f"/status/{taken}").get_json()["lease_expires_at"]
    finally:
        svc_redis.stop()


def test_a_live_record_redis_lost_is_put_back_from_firestore(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                             firestore_host: str, monkeypatch, services_now) -> None:
    """Redis loses everything (a failover after Firestore alone confirmed the accepts, or a
    restore from an old snapshot): dispatch's pass puts back every live record Firestore holds,
    with its token (a PROCESSING one with an expired lease); a finished one stays in Firestore only."""
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "0")
    out = [post_json(fn_apps.queue, "/enqueue", {"session_id": "lost", "priority": p, "webhook_url": "https://example.com/h",
                                                 "input": f"gs://{buckets.uploads}/lost/{p}.mp4"}).get_json()
           for p in (3, 1)]
    done = post_json(fn_apps.queue, "/enqueue", {"session_id": "lost",
                                                 "input": f"gs://{buckets.uploads}/lost/done.mp4"}).get_json()
    put_json(fn_apps.queue, f"/status/{done['request_id']}", {"state": "CANCELLED"})
    taken = fn_apps.queue.get("/next").get_json()["request_id"]
    assert taken == out[1]["request_id"]
    svc = services_now()
    svc.mirror.reconcile()
    svc.queue.r.flushall()

    assert fn_apps.dispatch.post("/", data="{}", content_type="application/json").status_code == 200
    queued, taken_back = svc.queue.get(out[0]["request_id"]), svc.queue.get(taken)
    assert queued.state == "QUEUED" and queued.webhook_url == "https://example.com/h"
    # The taken one comes back PROCESSING with an expired lease: the next pass asks Workflows about
    # its execution (it has none here, so it is re-queued), never a second run beside a live one.
    assert taken_back.state == "PROCESSING" and taken_back.lease_expires_at is not None
    assert svc.queue.expired_leases() == [taken]
    assert fn_apps.dispatch.post("/", data="{}", content_type="application/json").status_code == 200
    for o in out:
        rec = svc.queue.get(o["request_id"])
        assert rec is not None and rec.state == "QUEUED" and rec.webhook_url == "https://example.com/h"
        body = fn_apps.api.get(f"/status?callback_token={o['callback_token']}").get_json()
        assert body["request_id"] == o["request_id"] and body["state"] == "QUEUED"
    assert svc.queue.get(done["request_id"]) is None  # finished: the archive answers for it
    assert fn_apps.api.get(f"/status?callback_token={done['callback_token']}").get_json()["state"] == "CANCELLED"
    # Back in the queue by priority; the mirror's copy follows (a newer version than it held).
    assert [fn_apps.queue.get("/next").get_json()["request_id"] for _ in range(2)] == [o["request_id"] for o in out[::-1]]
    svc.mirror.reconcile()
    assert svc.queue.outbox() == {}
