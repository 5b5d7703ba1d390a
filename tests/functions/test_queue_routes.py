"""The queue function: enqueue, next (priority, FIFO, exactly once), status updates, statistics."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
from fn_testlib import Buckets, FnApps, assert_error, post_json, put_json


def _enqueue(fn_apps: FnApps, buckets: Buckets, n: int, priority: int | None = None, **extra) -> str:
    body = {"session_id": "q", "input": f"gs://{buckets.uploads}/q/v{n}.mp4", **extra}
    if priority is not None:
        body["priority"] = priority
    resp = post_json(fn_apps.queue, "/enqueue", body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()["request_id"]


def test_priority_then_fifo(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    plan = [5, 9, 0, 5, 3, 0, 9, 5, 3, 7, 0, 5]
    ids = [_enqueue(fn_apps, buckets, i, p) for i, p in enumerate(plan)]
    expected = [ids[i] for i in sorted(range(len(plan)), key=lambda i: (plan[i], i))]
    got = []
    for _ in plan:
        resp = fn_apps.queue.get("/next")
        assert resp.status_code == 200
        doc = resp.get_json()
        assert doc["state"] == "PROCESSING" and doc["lease_expires_at"] and doc["attempts"] == 1
        got.append(doc["request_id"])
    assert got == expected
    assert fn_apps.queue.get("/next").status_code == 204


def test_enqueue_with_stages_default_priority(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    rid = _enqueue(fn_apps, buckets, 1, stages=["mesh", "frames"])
    doc = fn_apps.queue.get(f"/status/{rid}").get_json()
    assert doc["priority"] == 5 and doc["stages_requested"] == ["frames", "mesh"]
    assert_error(post_json(fn_apps.queue, "/enqueue", {"session_id": "q", "input": f"gs://{buckets.uploads}/x",
                                                       "stages": ["frames", "frames"]}), 422, "invalid_stages")
    assert_error(post_json(fn_apps.queue, "/enqueue", {"session_id": "q", "input": f"gs://{buckets.uploads}/x",
                                                       "stages": ["paint"]}), 422, "invalid_stages")
    assert_error(post_json(fn_apps.queue, "/enqueue", {"session_id": "q", "input": f"gs://{buckets.uploads}/x",
                                                       "stages": []}), 422, "invalid_stages")


def test_fifty_threads_race_for_two_hundred(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    ids = {_enqueue(fn_apps, buckets, i, random.Random(i).randint(0, 9)) for i in range(200)}
    app = fn_apps.queue.application
    got: list[str] = []
    empties = Counter()
    lock = threading.Lock()
    start = threading.Barrier(50)

    def worker() -> None:
        client = app.test_client()
        start.wait()
        while True:
            resp = client.get("/next")
            if resp.status_code == 204:
                with lock:
                    empties["n"] += 1
                return
            assert resp.status_code == 200
            with lock:
                got.append(resp.get_json()["request_id"])

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert empties["n"] == 50
    assert len(got) == 200 and set(got) == ids  # every request exactly once
    stats = fn_apps.queue.get("/queue").get_json()
    assert stats["counts"]["PROCESSING"] == 200 and stats["counts"]["QUEUED"] == 0 and stats["running"] == 200


def test_transitions_and_stage_updates(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    rid = _enqueue(fn_apps, buckets, 1)
    url = f"/status/{rid}"
    # QUEUED -> COMPLETED is not a transition.
    err = assert_error(put_json(fn_apps.queue, url, {"state": "COMPLETED"}), 409, "illegal_transition")
    assert "QUEUED -> COMPLETED" in err["message"]
    assert_error(put_json(fn_apps.queue, url, {"state": "FAILED"}), 409)
    r = put_json(fn_apps.queue, url, {"state": "PROCESSING", "execution": "projects/p/locations/l/workflows/w/executions/e1"})
    assert r.status_code == 200 and r.get_json()["state"] == "PROCESSING" and r.get_json()["lease_expires_at"]
    # Same-state updates are fine; stage stamps come from the server.
    r = put_json(fn_apps.queue, url, {"state": "PROCESSING", "stage": "frames", "stage_state": "RUNNING",
                                      "batch_job": "projects/p/locations/l/jobs/frames-1", "progress": {"frames": 0.25}})
    doc = r.get_json()
    assert doc["stage"] == "frames" and doc["stages"]["frames"]["state"] == "RUNNING"
    assert doc["stages"]["frames"]["started_at"] and doc["stages"]["frames"]["finished_at"] is None
    assert doc["stages"]["frames"]["batch_job"].endswith("frames-1") and doc["progress"]["frames"] == 0.25
    started = doc["stages"]["frames"]["started_at"]
    time.sleep(0.01)
    doc = put_json(fn_apps.queue, url, {"stage": "frames", "stage_state": "SUCCEEDED"}).get_json()
    assert doc["stages"]["frames"]["started_at"] == started and doc["stages"]["frames"]["finished_at"] >= started
    assert doc["progress"]["frames"] == 1.0
    doc = put_json(fn_apps.queue, url, {"stage": "sfm", "stage_state": "RUNNING",
                                        "outputs": {"frames": "gs://d/jobs/x/frames/"}}).get_json()
    assert doc["stage"] == "sfm" and doc["outputs"] == {"frames": "gs://d/jobs/x/frames/"}
    doc = put_json(fn_apps.queue, url, {"state": "FAILED", "error": {"code": "sfm_failed", "message": "too few images"}}
                   ).get_json()
    assert doc["state"] == "FAILED" and doc["error"] == {"code": "sfm_failed", "message": "too few images", "stage": "sfm"}
    assert doc["lease_expires_at"] is None
    # Terminal: a retried identical PUT is fine, anything else is refused.
    assert put_json(fn_apps.queue, url, {"state": "FAILED"}).status_code == 200
    assert_error(put_json(fn_apps.queue, url, {"state": "COMPLETED"}), 409)
    assert_error(put_json(fn_apps.queue, url, {"progress": {"sfm": 0.5}}), 409)
    assert_error(put_json(fn_apps.queue, url, {"state": "QUEUED"}), 409)


def test_cancel_from_queued_and_processing(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    a, b = _enqueue(fn_apps, buckets, 1, 0), _enqueue(fn_apps, buckets, 2, 1)
    assert put_json(fn_apps.queue, f"/status/{a}", {"state": "CANCELLED"}).get_json()["state"] == "CANCELLED"
    nxt = fn_apps.queue.get("/next").get_json()
    assert nxt["request_id"] == b  # the cancelled one left the queue
    assert put_json(fn_apps.queue, f"/status/{b}", {"state": "CANCELLED"}).status_code == 200
    # A cancelled request's running workflow is told to stop by the 409 on its next update.
    assert_error(put_json(fn_apps.queue, f"/status/{b}", {"stage": "frames", "stage_state": "RUNNING"}), 409)
    stats = fn_apps.queue.get("/queue").get_json()
    assert stats["counts"] == {"QUEUED": 0, "PROCESSING": 0, "COMPLETED": 0, "FAILED": 0, "CANCELLED": 2,
                              "DELETED": 0}
    assert stats["running"] == 0


@pytest.mark.parametrize("body, code", [
    ({}, "empty_update"),
    ({"state": None}, "empty_update"),
    ({"state": "DONE"}, "invalid_state"),
    ({"stage": "paint"}, "invalid_stage"),
    ({"stage_state": "RUNNING"}, "invalid_stage_state"),
    ({"stage": "frames", "stage_state": "PENDING"}, "invalid_stage_state"),
    ({"progress": {"frames": 1.5}}, "invalid_progress"),
    ({"progress": {"frames": True}}, "invalid_progress"),
    ({"progress": {"paint": 0.5}}, "invalid_stage"),
    ({"progress": []}, "invalid_progress"),
    ({"outputs": {"ply": "/tmp/x.ply"}}, "invalid_outputs"),
    ({"outputs": {"a/b": "gs://x/y"}}, "invalid_outputs"),
    ({"error": {"code": "x"}}, "invalid_request"),
    ({"error": {"code": "x", "message": "m", "extra": 1}}, "invalid_error"),
    ({"batch_job": "j"}, "invalid_request"),
    ({"execution": ""}, "invalid_request"),
    ({"colour": "red"}, "unknown_field"),
    ({"warnings": {"code": "x", "message": "m"}}, "invalid_warnings"),
    ({"warnings": [{"code": "x"}]}, "invalid_request"),
    ({"warnings": [{"code": "x", "message": "m", "level": "high"}]}, "invalid_warnings"),
    ({"warnings": [{"code": "x", "message": "m", "stage": "paint"}]}, "invalid_stage"),
    ({"warnings": [{"code": f"c{i}", "message": "m"} for i in range(33)]}, "invalid_warnings"),
    ({"metrics": [1]}, "invalid_metrics"),
    ({"metrics": {"splat": 26.9}}, "invalid_metrics"),
    ({"metrics": {"paint": {"x": 1}}}, "invalid_stage"),
])
def test_bad_status_updates_are_422(fn_apps: FnApps, fn_env: dict, buckets: Buckets, body: dict, code: str) -> None:
    rid = _enqueue(fn_apps, buckets, 1)
    assert_error(put_json(fn_apps.queue, f"/status/{rid}", body), 422, code)


def test_unknown_ids(fn_apps: FnApps, fn_env: dict) -> None:
    assert_error(put_json(fn_apps.queue, f"/status/{'f' * 32}", {"state": "CANCELLED"}), 404)
    assert_error(put_json(fn_apps.queue, "/status/nope", {"state": "CANCELLED"}), 404)
    assert_error(fn_apps.queue.get(f"/status/{'f' * 32}"), 404)
    assert_error(fn_apps.queue.put(f"/status/{'f' * 32}", data="x", content_type="text/plain"), 415)


def test_queue_statistics(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    for i, p in enumerate([0, 0, 4, 9]):
        _enqueue(fn_apps, buckets, i, p)
    fn_apps.queue.get("/next")
    time.sleep(0.05)
    s = fn_apps.queue.get("/queue").get_json()
    assert s["counts"]["QUEUED"] == 3 and s["counts"]["PROCESSING"] == 1
    assert s["queued_by_priority"] == {"0": 1, "1": 0, "2": 0, "3": 0, "4": 1, "5": 0, "6": 0, "7": 0, "8": 0, "9": 1}
    assert s["running"] == 1 and s["max_concurrent_jobs"] == 2
    assert s["oldest_wait_seconds"] >= 0.05
    assert "mirror_pending" not in s  # no Firestore mirror in this environment


def test_lease_expiry_requeues_exactly_once(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch,
                                           services_now) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "1")
    first, second = _enqueue(fn_apps, buckets, 1, 3), _enqueue(fn_apps, buckets, 2, 3)
    assert fn_apps.queue.get("/next").get_json()["request_id"] == first
    time.sleep(1.2)
    svc = services_now()
    # Ten dispatchers race over the expired lease: one of them re-queues it.
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def requeue() -> None:
        barrier.wait()
        outcomes.append(svc.queue.requeue_expired(first, max_attempts=3))

    threads = [threading.Thread(target=requeue) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["requeued"] + ["skip"] * 9
    # Back at its old place: ahead of the request that arrived after it.
    doc = fn_apps.queue.get("/next").get_json()
    assert doc["request_id"] == first and doc["attempts"] == 2
    assert fn_apps.queue.get("/next").get_json()["request_id"] == second
    assert fn_apps.queue.get("/next").status_code == 204


def _processing(fn_apps: FnApps, buckets: Buckets, n: int, **extra) -> str:
    rid = _enqueue(fn_apps, buckets, n, **extra)
    assert fn_apps.queue.get("/next").get_json()["request_id"] == rid
    return rid


MESH_WARNING = {"code": "EMPTY_MESH", "message": "the fused depth maps gave no surface", "stage": "mesh"}


def test_a_failed_best_effort_stage_leaves_a_completed_request_with_a_warning(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    rid = _processing(fn_apps, buckets, 1)
    url = f"/status/{rid}"
    doc = fn_apps.queue.get(url).get_json()
    assert doc["warnings"] == [] and doc["metrics"] == {}
    assert all(st["error"] is None for st in doc["stages"].values())
    splat_ply = f"gs://{buckets.data}/jobs/{rid}/splat/point_cloud.ply"
    put_json(fn_apps.queue, url, {"stage": "splat", "stage_state": "SUCCEEDED", "outputs": {"splat_ply": splat_ply},
                                  "metrics": {"splat": {"heldout_psnr": 26.95, "heldout_ssim": 0.882,
                                                        "gaussians": 40000}}})
    put_json(fn_apps.queue, url, {"stage": "mesh", "stage_state": "RUNNING"})
    r = put_json(fn_apps.queue, url, {"stage": "mesh", "stage_state": "FAILED", "warnings": [MESH_WARNING]})
    assert r.status_code == 200, r.get_data(as_text=True)
    # A retried update (the workflow's HTTP call is retried) adds no second warning.
    assert put_json(fn_apps.queue, url, {"stage": "mesh", "stage_state": "FAILED", "warnings": [MESH_WARNING]}
                    ).status_code == 200
    r = put_json(fn_apps.queue, url, {"state": "COMPLETED", "outputs": {"splat_ply": splat_ply}})
    assert r.status_code == 200, r.get_data(as_text=True)
    for doc in (r.get_json(), fn_apps.queue.get(url).get_json()):
        assert doc["state"] == "COMPLETED" and doc["error"] is None
        assert doc["outputs"] == {"splat_ply": splat_ply}
        assert doc["warnings"] == [MESH_WARNING]
        assert doc["stages"]["mesh"]["state"] == "FAILED" and doc["stages"]["mesh"]["finished_at"]
        assert doc["stages"]["mesh"]["error"] == {"code": "EMPTY_MESH",
                                                  "message": "the fused depth maps gave no surface"}
        assert doc["stages"]["splat"]["state"] == "SUCCEEDED" and doc["stages"]["splat"]["error"] is None
        assert doc["metrics"] == {"splat": {"heldout_psnr": 26.95, "heldout_ssim": 0.882, "gaussians": 40000}}


def test_completed_after_a_failed_stage_that_is_not_best_effort_is_refused(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    rid = _processing(fn_apps, buckets, 1)
    url = f"/status/{rid}"
    put_json(fn_apps.queue, url, {"stage": "sfm", "stage_state": "FAILED"})
    err = assert_error(put_json(fn_apps.queue, url, {"state": "COMPLETED"}), 409, "illegal_transition")
    assert "stage sfm FAILED and is not best-effort" in err["message"]
    # Nor in the same update.
    other = _processing(fn_apps, buckets, 2)
    assert_error(put_json(fn_apps.queue, f"/status/{other}", {"state": "COMPLETED", "stage": "splat",
                                                             "stage_state": "FAILED"}), 409)
    assert fn_apps.queue.get(f"/status/{other}").get_json()["stages"]["splat"]["state"] == "PENDING"
    assert put_json(fn_apps.queue, url, {"state": "FAILED"}).get_json()["state"] == "FAILED"


def test_warnings_append_one_per_stage_and_code(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    rid = _processing(fn_apps, buckets, 1)
    url = f"/status/{rid}"
    put_json(fn_apps.queue, url, {"stage": "sfm", "stage_state": "RUNNING"})
    # No stage in the warning: it is the update's stage (or else the record's current one).
    doc = put_json(fn_apps.queue, url, {"warnings": [{"code": "few_points", "message": "m1"}]}).get_json()
    assert doc["warnings"] == [{"code": "few_points", "message": "m1", "stage": "sfm"}]
    doc = put_json(fn_apps.queue, url, {"stage": "mesh", "warnings": [
        {"code": "few_points", "message": "m2"}, {"code": "few_points", "message": "again", "stage": "sfm"},
        {"code": "slow", "message": "m3", "stage": "sfm"}]}).get_json()
    assert doc["warnings"] == [{"code": "few_points", "message": "m1", "stage": "sfm"},
                               {"code": "few_points", "message": "m2", "stage": "mesh"},
                               {"code": "slow", "message": "m3", "stage": "sfm"}]
    # A long message is cut, not refused (a refused update would fail the request).
    doc = put_json(fn_apps.queue, url, {"warnings": [{"code": "long", "message": "x" * 5000}]}).get_json()
    assert doc["warnings"][-1]["message"] == "x" * 4095 + "…"
    # Bounded: at most MAX_WARNINGS in all, the first ones kept.
    from core import record as jobrecord

    for i in range(2):
        put_json(fn_apps.queue, url, {"warnings": [{"code": f"w{i}_{j}", "message": "m", "stage": "depth"}
                                                   for j in range(jobrecord.MAX_WARNINGS)]})
    doc = fn_apps.queue.get(url).get_json()
    assert len(doc["warnings"]) == jobrecord.MAX_WARNINGS and doc["warnings"][2]["code"] == "slow"
    assert doc["warnings"][-1]["code"] == f"w0_{jobrecord.MAX_WARNINGS - 5}"


def test_metrics_merge_per_stage_and_keep_only_bounded_scalars(fn_apps: FnApps, fn_env: dict,
                                                               buckets: Buckets) -> None:
    from core import record as jobrecord

    rid = _processing(fn_apps, buckets, 1)
    url = f"/status/{rid}"
    doc = put_json(fn_apps.queue, url, {"stage": "sfm", "stage_state": "SUCCEEDED", "metrics": {"sfm": {
        "registered_images": 40, "registered_fraction": 1.0, "mapper": "global", "verified": True,
        "cameras": {"1": "PINHOLE"}, "unregistered": [], "note": None, "bad key": 1, "x" * 65: 1,
        "long": "y" * (jobrecord.MAX_METRIC_TEXT + 1), "huge": 10**15}}}).get_json()
    assert doc["metrics"] == {"sfm": {"registered_images": 40, "registered_fraction": 1.0, "mapper": "global",
                                      "verified": True}}
    # Merged: a later update of the same stage adds and overwrites keys, other stages stay.
    doc = put_json(fn_apps.queue, url, {"metrics": {"sfm": {"registered_images": 39, "points": 1234},
                                                    "splat": {"heldout_psnr": 25.5}}}).get_json()
    assert doc["metrics"] == {"sfm": {"registered_images": 39, "registered_fraction": 1.0, "mapper": "global",
                                      "verified": True, "points": 1234}, "splat": {"heldout_psnr": 25.5}}
    # At most MAX_METRICS_PER_STAGE keys per stage, across updates too.
    many = {f"k{i}": i for i in range(2 * jobrecord.MAX_METRICS_PER_STAGE)}
    doc = put_json(fn_apps.queue, url, {"metrics": {"depth": many}}).get_json()
    assert doc["metrics"]["depth"] == {f"k{i}": i for i in range(jobrecord.MAX_METRICS_PER_STAGE)}
    doc = put_json(fn_apps.queue, url, {"metrics": {"sfm": many}}).get_json()
    assert len(doc["metrics"]["sfm"]) == jobrecord.MAX_METRICS_PER_STAGE
    assert doc["metrics"]["sfm"]["registered_images"] == 39
    # Nothing keepable: the update succeeds and the stage has no metrics.
    doc = put_json(fn_apps.queue, url, {"metrics": {"mesh": {"faces": [1, 2]}}}).get_json()
    assert "mesh" not in doc["metrics"]


def _mirrored(services_now: Any, request_id: str, timeout: float = 30.0) -> dict:
    """The Firestore document once it holds the record's current version (dispatch's catch-up
    pass copies what an in-request attempt left pending, e.g. while the breaker was open)."""
    from fn_testlib import PROJECT

    from core import record as jobrecord
    from functions.status.mirror import MIRROR_VERSION, firestore_client

    svc = services_now()
    ref = firestore_client(PROJECT).collection(jobrecord.COLLECTION).document(request_id)
    deadline = time.monotonic() + timeout
    while True:
        svc.mirror.reconcile()
        snap = ref.get(timeout=10)
        doc = snap.to_dict() if snap.exists else None
        if doc and doc.get(MIRROR_VERSION) == svc.queue.get(request_id).version:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.5)


def test_firestore_mirrors_warnings_metrics_and_a_completed_request_has_no_error(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, firestore_host: str, monkeypatch, services_now) -> None:
    from fn_testlib import PROJECT

    from batch_jobs.progress import FirestoreSink  # what a failing stage writes with
    from core import record as jobrecord

    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    services_now().mirror.breaker_seconds = 1.0
    rid = _processing(fn_apps, buckets, 1)
    url = f"/status/{rid}"
    doc = _mirrored(services_now, rid)
    assert doc["warnings"] == [] and doc["metrics"] == {}
    put_json(fn_apps.queue, url, {"stage": "splat", "stage_state": "SUCCEEDED",
                                  "metrics": {"splat": {"heldout_psnr": 26.95, "gaussians": 40000}}})
    put_json(fn_apps.queue, url, {"stage": "mesh", "stage_state": "RUNNING"})
    # The mesh stage fails: its runner writes the error to the document, as on any failure.
    FirestoreSink(rid, project=PROJECT).write({"error": {**MESH_WARNING},
                                               jobrecord.stage_path("mesh", "message"): MESH_WARNING["message"]})
    put_json(fn_apps.queue, url, {"stage": "mesh", "stage_state": "FAILED", "warnings": [MESH_WARNING]})
    put_json(fn_apps.queue, url, {"state": "COMPLETED", "outputs": {"splat_ply": f"gs://{buckets.data}/x.ply"}})
    doc = _mirrored(services_now, rid)
    assert doc["state"] == "COMPLETED" and doc["error"] is None
    assert doc["warnings"] == [MESH_WARNING]
    assert doc["metrics"] == {"splat": {"heldout_psnr": 26.95, "gaussians": 40000}}
    assert doc["stages"]["mesh"]["state"] == "FAILED" and doc["stages"]["mesh"]["message"] == MESH_WARNING["message"]
