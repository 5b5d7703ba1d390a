"""The Firestore mirror against the real emulator, and through an outage of it."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from fn_testlib import PROJECT, Buckets, FnApps, TcpProxy, post_json, put_json

from core import record as jobrecord
from functions.status.mirror import firestore_client


@pytest.fixture
def mirror_env(fn_env: dict, firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    return firestore_host


def _doc(request_id: str) -> dict | None:
    snap = firestore_client(PROJECT).collection(jobrecord.COLLECTION).document(request_id).get(timeout=10)
    return snap.to_dict() if snap.exists else None


def _trigger(fn_apps: FnApps, buckets: Buckets, n: int) -> dict:
    """A trigger, then dispatch's catch-up pass, which mirrors new requests (off the trigger's path)."""
    from functions.config import Settings
    from functions.context import services

    resp = post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "m", "input": f"gs://{buckets.uploads}/m/{n}.mp4", "priority": 3})
    assert resp.status_code == 202
    services(Settings.from_env()).mirror.reconcile()
    return resp.get_json()


def test_every_change_is_mirrored(fn_apps: FnApps, mirror_env: str, buckets: Buckets, services_now) -> None:
    out = _trigger(fn_apps, buckets, 1)
    rid = out["request_id"]
    doc = _doc(rid)
    assert doc["state"] == "QUEUED" and doc["priority"] == 3 and doc["session_id"] == "m"
    assert doc["input"] == f"gs://{buckets.uploads}/m/1.mp4" and doc["options"] == {"preset": "standard"}
    assert isinstance(doc["created_at"], dt.datetime) and doc["callback_token_sha256"] != out["callback_token"]
    assert len(doc["callback_token_sha256"]) == 64
    fn_apps.queue.get("/next")
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "frames", "stage_state": "RUNNING", "batch_job": "jobs/f1"})
    doc = _doc(rid)
    assert doc["state"] == "PROCESSING" and doc["stage"] == "frames"
    assert doc["stages"]["frames"]["state"] == "RUNNING" and doc["stages"]["frames"]["batch_job"] == "jobs/f1"
    assert isinstance(doc["stages"]["frames"]["started_at"], dt.datetime)
    put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "stage": "frames", "stage_state": "SUCCEEDED",
                                               "outputs": {"point_cloud.ply": "gs://d/jobs/x/splat/point_cloud.ply"}})
    doc = _doc(rid)
    assert doc["state"] == "COMPLETED" and doc["outputs"] == {"point_cloud.ply": "gs://d/jobs/x/splat/point_cloud.ply"}
    assert doc["progress"] == {"frames": 1.0}
    assert doc["mirror_version"] == services_now().queue.get(rid).version
    assert services_now().queue.outbox() == {}


def test_stage_writes_are_kept_and_shown(fn_apps: FnApps, mirror_env: str, buckets: Buckets) -> None:
    from batch_jobs.progress import FirestoreSink  # what a running stage writes with

    out = _trigger(fn_apps, buckets, 2)
    rid = out["request_id"]
    fn_apps.queue.get("/next")
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "sfm", "stage_state": "RUNNING"})
    FirestoreSink(rid, project=PROJECT).write({jobrecord.progress_path("sfm"): 0.4,
                                               jobrecord.stage_path("sfm", "message"): "matching 12/30"})
    doc = fn_apps.api.get(f"/status?callback_token={out['callback_token']}").get_json()
    assert doc["progress"]["sfm"] == 0.4 and doc["stages"]["sfm"]["message"] == "matching 12/30"
    # A control-plane write afterwards leaves the stage's fields alone.
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "sfm", "batch_job": "jobs/sfm-1"})
    fs = _doc(rid)
    assert fs["stages"]["sfm"]["message"] == "matching 12/30" and fs["progress"]["sfm"] == 0.4
    assert fs["stages"]["sfm"]["batch_job"] == "jobs/sfm-1"


def test_an_older_version_never_overwrites_a_newer_one(fn_apps: FnApps, mirror_env: str, buckets: Buckets,
                                                      services_now) -> None:
    rid = _trigger(fn_apps, buckets, 3)["request_id"]
    ref = firestore_client(PROJECT).collection(jobrecord.COLLECTION).document(rid)
    ref.update({"mirror_version": 999, "state": "FROM-THE-FUTURE"})
    svc = services_now()
    put_json(fn_apps.queue, f"/status/{rid}", {"state": "CANCELLED"})
    assert _doc(rid)["state"] == "FROM-THE-FUTURE"
    assert svc.queue.outbox() == {}  # nothing pending: Firestore already had a newer version
    assert svc.mirror.sync(rid) is True


def test_firestore_outage_blocks_nothing_and_the_mirror_catches_up(fn_apps: FnApps, mirror_env: str,
                                                                   buckets: Buckets, monkeypatch,
                                                                   services_now) -> None:
    proxy = TcpProxy(int(mirror_env.rsplit(":", 1)[1]))
    proxy.up()
    try:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
        services_now().mirror.breaker_seconds = 2.0  # probe again after 2 s (not 15) in this test
        before = _trigger(fn_apps, buckets, 4)["request_id"]
        assert _doc(before)["state"] == "QUEUED"

        proxy.down()
        t0 = time.monotonic()
        during = _trigger(fn_apps, buckets, 5)["request_id"]
        assert fn_apps.queue.get("/next").get_json()["request_id"] == before
        r = put_json(fn_apps.queue, f"/status/{before}", {"stage": "frames", "stage_state": "RUNNING"})
        assert r.status_code == 200
        assert put_json(fn_apps.queue, f"/status/{during}", {"state": "CANCELLED"}).status_code == 200
        st = fn_apps.queue.get(f"/status/{before}")
        assert st.status_code == 200 and st.get_json()["stages"]["frames"]["state"] == "RUNNING"
        assert time.monotonic() - t0 < 15, "an outage must not stall requests"
        assert fn_apps.queue.get("/queue").get_json()["mirror_pending"] == 2
        # A dispatch during the outage still works; the mirror stays pending.
        resp = fn_apps.dispatch.post("/", data="{}", content_type="application/json")
        assert resp.status_code == 200
        assert fn_apps.queue.get("/queue").get_json()["mirror_pending"] == 2

        # Firestore is back. gRPC reconnects with a backoff (1 s, growing), so the catch-up may
        # take another dispatch or two (Cloud Scheduler calls it every minute).
        proxy.up()
        deadline = time.monotonic() + 30
        while services_now().queue.outbox() and time.monotonic() < deadline:
            assert fn_apps.dispatch.post("/", data="{}", content_type="application/json").status_code == 200
            time.sleep(0.5)
        assert services_now().queue.outbox() == {}
        assert _doc(during)["state"] == "CANCELLED"
        fs = _doc(before)
        assert fs["state"] == "PROCESSING" and fs["stages"]["frames"]["state"] == "RUNNING"
        assert fs["mirror_version"] == services_now().queue.get(before).version
    finally:
        proxy.down()


def test_the_catch_up_pass_mirrors_a_burst_in_batches(fn_apps: FnApps, mirror_env: str, buckets: Buckets,
                                                      monkeypatch: pytest.MonkeyPatch, services_now) -> None:
    """250 new requests: three batched writes (100 a batch), not a read and a write per record;
    a batch that loses a race (here: one document written in between) falls back to one sync per
    record, and a newer document is never overwritten."""
    from google.cloud.firestore_v1.batch import WriteBatch

    from functions.status.mirror import StatusMirror

    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "0")
    ids = [post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "burst", "input": f"gs://{buckets.uploads}/b/{i}.mp4"}).get_json()["request_id"]
           for i in range(250)]
    svc = services_now()
    commits: list[int] = []
    singles: list[str] = []
    real_commit, real_sync = WriteBatch.commit, StatusMirror.sync

    def counting_commit(self: WriteBatch, *a: object, **kw: object) -> object:
        commits.append(len(self))
        return real_commit(self, *a, **kw)

    def counting_sync(self: StatusMirror, rid: str) -> bool:
        singles.append(rid)
        return real_sync(self, rid)

    monkeypatch.setattr(WriteBatch, "commit", counting_commit)
    monkeypatch.setattr(StatusMirror, "sync", counting_sync)
    assert svc.mirror.reconcile(limit=1000, budget=60) == {"synced": 250, "pending": 0}
    assert commits == [100, 100, 50] and singles == []
    assert all(_doc(i)["state"] == "QUEUED" for i in (ids[0], ids[149], ids[249]))

    # Two records change (in the queue alone: left to the catch-up pass), and one document is
    # written by someone else after the pass read it.
    for rid in ids[:2]:
        svc.queue.update(rid, {"state": "CANCELLED"}, 60)
    ref = firestore_client(PROJECT).collection(jobrecord.COLLECTION).document(ids[0])
    real_get_all = type(ref._client).get_all

    def racing_get_all(self: object, *a: object, **kw: object) -> object:
        snaps = list(real_get_all(self, *a, **kw))
        ref.update({"mirror_version": 999, "state": "FROM-THE-FUTURE"})
        return snaps

    monkeypatch.setattr(type(ref._client), "get_all", racing_get_all)
    singles.clear()
    assert svc.mirror.reconcile(limit=1000, budget=60) == {"synced": 2, "pending": 0}
    assert sorted(singles) == sorted(ids[:2])  # the batch failed its precondition: one by one
    assert _doc(ids[0])["state"] == "FROM-THE-FUTURE" and _doc(ids[1])["state"] == "CANCELLED"
