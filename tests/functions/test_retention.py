"""Redis stays bounded: finished records whose final version Firestore holds leave Redis after
`RECORD_RETENTION_SECONDS` (dispatch's pass), and every read of them still answers, from
Firestore: the status by token and by id, the session's list; a restart or a delete puts the
record back first. Against the real Redis and the real Firestore emulator."""

from __future__ import annotations

import time

import pytest
from fn_testlib import Buckets, FnApps, post_json, put_json

from functions.intake import callback_token

TOKEN = "X-Callback-Token"


@pytest.fixture
def retained(fn_env: dict, firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "0")
    monkeypatch.setenv("RECORD_RETENTION_SECONDS", "1")


def _enqueue(fn_apps: FnApps, buckets: Buckets, name: str) -> tuple[str, str]:
    out = post_json(fn_apps.queue, "/enqueue", {"session_id": "ret", "input": f"gs://{buckets.uploads}/ret/{name}.mp4"})
    assert out.status_code in (200, 202)
    return out.get_json()["request_id"], out.get_json()["callback_token"]


def _dispatch(fn_apps: FnApps) -> None:
    assert fn_apps.dispatch.post("/", data="{}", content_type="application/json").status_code == 200


def test_finished_records_leave_redis_and_still_answer(fn_apps: FnApps, buckets: Buckets, retained: None,
                                                       services_now) -> None:
    svc = services_now()
    done, done_token = _enqueue(fn_apps, buckets, "done")
    gone, gone_token = _enqueue(fn_apps, buckets, "cancelled")
    live, _ = _enqueue(fn_apps, buckets, "live")
    assert fn_apps.queue.get("/next").get_json()["request_id"] == done
    put_json(fn_apps.queue, f"/status/{done}", {"stage": "frames", "stage_state": "RUNNING", "batch_job": "jobs/f"})
    put_json(fn_apps.queue, f"/status/{done}", {"state": "COMPLETED", "stage": "frames", "stage_state": "SUCCEEDED",
                                                "outputs": {"point_cloud.ply": f"gs://{buckets.data}/jobs/{done}/p.ply"},
                                                "metrics": {"frames": {"selected": 40}}})
    put_json(fn_apps.queue, f"/status/{gone}", {"state": "CANCELLED"})
    before = fn_apps.api.get(f"/status?callback_token={done_token}").get_json()

    _dispatch(fn_apps)  # mirrors the final versions: now they count down the retention
    assert svc.queue.get(done) is not None  # not yet: mirrored less than a second ago
    time.sleep(1.2)
    _dispatch(fn_apps)
    assert svc.queue.get(done) is None and svc.queue.get(gone) is None
    assert svc.queue.get(live).state == "QUEUED"  # a live record never leaves
    assert svc.queue.id_for_token(callback_token.digest(done_token)) is None
    counts = fn_apps.queue.get("/queue").get_json()["counts"]
    assert counts["COMPLETED"] == 0 and counts["CANCELLED"] == 0 and counts["QUEUED"] == 1

    # Every read still answers, from Firestore.
    after = fn_apps.api.get(f"/status?callback_token={done_token}").get_json()
    for key in ("request_id", "state", "outputs", "stages", "metrics", "created_at", "input", "options"):
        assert after[key] == before[key], key
    assert fn_apps.api.get(f"/status/{done}", headers={TOKEN: done_token}).get_json()["state"] == "COMPLETED"
    assert fn_apps.api.get(f"/status/{done}", headers={TOKEN: gone_token}).status_code == 404
    listed = fn_apps.api.get("/requests?session_id=ret", headers={TOKEN: done_token}).get_json()["requests"]
    assert sorted(r["request_id"] for r in listed) == sorted([done, gone, live])

    # A restart puts the record back in Redis, QUEUED; a delete too, as a tombstone.
    resp = fn_apps.api.post(f"/requests/{gone}/restart", headers={TOKEN: gone_token})
    assert resp.status_code == 202 and resp.get_json()["state"] == "QUEUED"
    assert svc.queue.get(gone).state == "QUEUED"
    resp = fn_apps.api.delete(f"/requests/{done}", headers={TOKEN: done_token})
    assert resp.status_code == 200 and resp.get_json()["state"] == "DELETED"
    assert svc.queue.get(done).state == "DELETED"
    svc.mirror.reconcile()
    assert svc.queue.outbox() == {}


def test_nothing_leaves_redis_before_firestore_holds_its_final_version(
        fn_apps: FnApps, buckets: Buckets, retained: None, firestore_host: str, services_now,
        monkeypatch: pytest.MonkeyPatch) -> None:
    kept, _ = _enqueue(fn_apps, buckets, "unmirrored")
    deleted, token = _enqueue(fn_apps, buckets, "deleted-later")
    put_json(fn_apps.queue, f"/status/{deleted}", {"state": "CANCELLED"})
    _dispatch(fn_apps)  # CANCELLED mirrored: on retention's list
    # Firestore down from here: what changes now is only in Redis, so it must stay there.
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    svc = services_now()
    put_json(fn_apps.queue, f"/status/{kept}", {"state": "CANCELLED"})  # never mirrored
    assert fn_apps.api.delete(f"/requests/{deleted}", headers={TOKEN: token}).status_code == 200  # DELETED: not mirrored
    time.sleep(1.2)
    _dispatch(fn_apps)
    assert svc.queue.get(kept).state == "CANCELLED" and svc.queue.get(deleted).state == "DELETED"
    assert {kept, deleted} <= set(svc.queue.outbox())
    # Firestore back: the final versions are mirrored, and only then do they leave.
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    # The mirror's breaker would let a probe through after BREAKER_SECONDS; the test does not wait.
    monkeypatch.setattr(svc.mirror, "_down_until", 0.0)
    _dispatch(fn_apps)
    time.sleep(1.2)
    _dispatch(fn_apps)
    svc = services_now()
    assert svc.queue.get(kept) is None and svc.queue.get(deleted) is None
    gone = fn_apps.api.get(f"/status/{deleted}", headers={TOKEN: token}).get_json()
    assert gone["state"] == "DELETED" and not gone.get("outputs")  # the archive kept no old outputs
