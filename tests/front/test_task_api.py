"""The task API on the `api` function against a real Redis and the real storage emulator: options,
uploads, list, cancel, restart, delete, download, and every bad input as a clear 4xx."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests
from fn_testlib import Buckets, FnApps, assert_error, post_json, put_json

from core import gcs, stages
from core.options import OPTION_SPECS

TOKEN = "X-Callback-Token"


def _trigger(fn_apps: FnApps, buckets: Buckets, session: str = "front", name: str = "v.mp4",
             **extra: Any) -> tuple[str, str]:
    body = {"session_id": session, "input": f"gs://{buckets.uploads}/{session}/{name}", **extra}
    resp = post_json(fn_apps.api, "/trigger-reconstruction", body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()["request_id"], resp.get_json()["callback_token"]


def _put(buckets: Buckets, name: str, data: bytes) -> str:
    gcs.client("splatpipe-local").bucket(buckets.data).blob(name).upload_from_string(data)
    return f"gs://{buckets.data}/{name}"


def _complete(fn_apps: FnApps, buckets: Buckets, rid: str) -> dict[str, str]:
    """Take the request and finish it as the workflow would, with two outputs in its workspace."""
    assert fn_apps.queue.get("/next").get_json()["request_id"] == rid
    ws = f"jobs/{rid}"
    for s in ("frames", "sfm", "depth", "splat", "mesh"):
        _put(buckets, f"{ws}/{s}/_SUCCESS.json", json.dumps({"stage": s}).encode())
        assert put_json(fn_apps.queue, f"/status/{rid}", {"stage": s, "stage_state": "SUCCEEDED"}).status_code == 200
    outputs = {"preview": _put(buckets, f"{ws}/splat/preview.png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
               "splat_ply": _put(buckets, f"{ws}/splat/point_cloud.ply", b"ply\n" + bytes(300))}
    resp = put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "outputs": outputs})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return outputs


def test_options_come_from_the_one_options_table(fn_apps: FnApps, fn_env: dict) -> None:
    resp = fn_apps.api.get("/options")
    assert resp.status_code == 200
    cat = resp.get_json()
    assert cat["presets"] == ["preview", "standard", "high"] and cat["default_preset"] == "standard"
    by_name = {o["name"]: o for o in cat["options"]}
    assert list(by_name) == list(OPTION_SPECS)
    assert by_name["preset"]["default"] == "standard" and by_name["preset"]["choices"] == cat["presets"]
    assert by_name["matcher"]["choices"] == list(OPTION_SPECS["matcher"].choices or ())
    assert by_name["splat_steps"]["type"] == "integer" and by_name["splat_steps"]["minimum"] == 10
    assert by_name["mesh_voxel_size"]["type"] == "number" and by_name["depth"]["type"] == "boolean"
    splat = stages.REGISTRY["splat"]
    assert by_name["splat_steps"]["preset_values"] == {p: splat.presets[p][splat.options["splat_steps"]]
                                                       for p in cat["presets"]}
    assert by_name["splat_steps"]["default"] == by_name["splat_steps"]["preset_values"]["standard"]
    assert all(o["help"] for o in cat["options"])


def test_cancel_a_queued_request_and_the_bad_cases(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    rid, token = _trigger(fn_apps, buckets)
    assert_error(fn_apps.api.post(f"/requests/{rid}/cancel"), 401, "token_required")
    assert_error(fn_apps.api.post(f"/requests/{rid}/cancel", headers={TOKEN: "wrong"}), 404, "not_found")
    assert_error(fn_apps.api.post(f"/requests/{'0' * 32}/cancel", headers={TOKEN: token}), 404, "not_found")
    resp = fn_apps.api.post(f"/requests/{rid}/cancel", headers={TOKEN: token})
    assert resp.status_code == 200 and resp.get_json()["state"] == "CANCELLED"
    assert fn_apps.queue.get("/next").status_code == 204  # out of the queue
    err = assert_error(fn_apps.api.post(f"/requests/{rid}/cancel", headers={TOKEN: token}), 409, "wrong_state")
    assert "CANCELLED" in err["message"]


def test_cancel_a_running_request_stops_its_execution_and_batch_job(
        fn_apps: FnApps, buckets: Buckets, fn_env: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fn_testlib import RecordingServer, local_engine

    rid, token = _trigger(fn_apps, buckets)
    fn_apps.queue.get("/next")
    job = "projects/p/locations/us-central1/jobs/sp-splat-x"
    with local_engine(tmp_path) as engine, RecordingServer(lambda method, path, body: (200, {})) as batch:
        execution = engine.engine.create_execution(engine.engine.workflow_name("reconstruct"), '{"sleep": 30}')
        put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING", "batch_job": job,
                                                   "execution": execution.name})
        monkeypatch.setenv("WORKFLOWS_EMULATOR_HOST", engine.host)
        monkeypatch.setenv("BATCH_EMULATOR_HOST", batch.host)
        resp = fn_apps.api.post(f"/requests/{rid}/cancel", headers={TOKEN: token})
        seen = [(m, p) for m, p, _, _ in batch.requests]
        assert resp.status_code == 200 and resp.get_json()["state"] == "CANCELLED"
        assert execution.state == "CANCELLED"
    assert ("DELETE", f"/v1/{job}") in seen


def test_restart_from_a_stage_with_new_options(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    rid, token = _trigger(fn_apps, buckets, options={"preset": "preview", "splat_steps": 50})
    assert_error(fn_apps.api.post(f"/requests/{rid}/restart", headers={TOKEN: token}), 409, "wrong_state")
    _complete(fn_apps, buckets, rid)
    h = {TOKEN: token}
    assert_error(post_json(fn_apps.api, f"/requests/{rid}/restart", {"from_stage": "nope"}, headers=h), 422,
                 "invalid_stage")
    assert_error(post_json(fn_apps.api, f"/requests/{rid}/restart", {"options": {"splat_steps": 1}}, headers=h),
                 422, "invalid_options")
    assert_error(post_json(fn_apps.api, f"/requests/{rid}/restart", {"stage": "sfm"}, headers=h), 422,
                 "unknown_field")
    resp = post_json(fn_apps.api, f"/requests/{rid}/restart", {"from_stage": "splat", "options": {"splat_steps": 80}},
                     headers=h)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    st = resp.get_json()
    assert st["state"] == "QUEUED" and st["outputs"] == {} and st["options"] == {"preset": "preview", "splat_steps": 80}
    assert all(s["state"] == "PENDING" for s in st["stages"].values())
    bucket = gcs.client("splatpipe-local").bucket(buckets.data)
    assert [s for s in ("frames", "sfm", "depth", "splat", "mesh") if bucket.blob(f"jobs/{rid}/{s}/_SUCCESS.json").exists()] \
        == ["frames", "sfm", "depth"]
    assert json.loads(bucket.blob(f"jobs/{rid}/request.json").download_as_bytes())["options"]["splat_steps"] == 80
    taken = fn_apps.queue.get("/next").get_json()  # it runs again: the same id, the same workspace
    assert taken["request_id"] == rid and taken["state"] == "PROCESSING"
    assert_error(fn_apps.api.post(f"/requests/{rid}/restart", headers=h), 409, "wrong_state")


def test_delete_leaves_a_tombstone(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    rid, token = _trigger(fn_apps, buckets)
    _complete(fn_apps, buckets, rid)
    h = {TOKEN: token}
    resp = fn_apps.api.delete(f"/requests/{rid}", headers=h)
    assert resp.status_code == 200 and resp.get_json()["state"] == "DELETED" and resp.get_json()["outputs"] == {}
    assert list(gcs.client("splatpipe-local").list_blobs(buckets.data, prefix=f"jobs/{rid}/")) == []
    status = fn_apps.api.get(f"/status/{rid}", headers=h)
    assert status.status_code == 200 and status.get_json()["state"] == "DELETED"
    assert fn_apps.api.delete(f"/requests/{rid}", headers=h).status_code == 200  # again: the same answer
    assert_error(fn_apps.api.post(f"/requests/{rid}/restart", headers=h), 409, "wrong_state")
    assert_error(fn_apps.api.get(f"/requests/{rid}/download", headers=h), 409, "wrong_state")
    assert fn_apps.queue.get("/queue").get_json()["counts"]["DELETED"] == 1


def test_delete_a_queued_request_cancels_it_first(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    rid, token = _trigger(fn_apps, buckets)
    resp = fn_apps.api.delete(f"/requests/{rid}", headers={TOKEN: token})
    assert resp.status_code == 200 and resp.get_json()["state"] == "DELETED"
    assert fn_apps.queue.get("/next").status_code == 204


def test_list_a_sessions_requests_by_any_of_their_tokens(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    a, token_a = _trigger(fn_apps, buckets, session="front-s", name="a.mp4")
    b, _ = _trigger(fn_apps, buckets, session="front-s", name="b.mp4")
    _, token_other = _trigger(fn_apps, buckets, session="front-other", name="c.mp4")
    resp = fn_apps.api.get("/requests?session_id=front-s", headers={TOKEN: token_a})
    assert resp.status_code == 200
    assert [r["request_id"] for r in resp.get_json()["requests"]] == [b, a]  # newest first
    assert_error(fn_apps.api.get("/requests?session_id=front-s", headers={TOKEN: token_other}), 404, "not_found")
    assert_error(fn_apps.api.get("/requests?session_id=front-s"), 401, "token_required")
    assert_error(fn_apps.api.get("/requests?session_id=..", headers={TOKEN: token_a}), 422, "invalid_session_id")
    # The IAM-only queue lists by session id alone (no token), with the queue's own fields.
    listed = fn_apps.queue.get("/requests?session_id=front-s")
    assert listed.status_code == 200
    assert [(r["request_id"], "attempts" in r) for r in listed.get_json()["requests"]] == [(b, True), (a, True)]
    assert fn_apps.queue.get("/requests?session_id=nobody").get_json()["requests"] == []
    assert_error(fn_apps.queue.get("/requests?session_id=.."), 422, "invalid_session_id")


def test_download_manifest_and_zip(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    rid, token = _trigger(fn_apps, buckets)
    h = {TOKEN: token}
    assert_error(fn_apps.api.get(f"/requests/{rid}/download", headers=h), 409, "wrong_state")  # nothing yet
    _complete(fn_apps, buckets, rid)
    # An output the workflow named oddly is not a file of this workspace: left out, not a 500.
    assert put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "outputs": {"odd": "gs:///x"}}
                    ).status_code == 200
    man = fn_apps.api.get(f"/requests/{rid}/download", headers=h).get_json()
    assert [(f["name"], f["path"], f["size"]) for f in man["files"]] == [
        ("preview", "splat/preview.png", 108), ("splat_ply", "splat/point_cloud.ply", 304)]
    for f in man["files"]:  # the URLs work with no credentials
        got = requests.get(f["url"], timeout=30)
        assert got.status_code == 200 and len(got.content) == f["size"]
    z = fn_apps.api.get(f"/requests/{rid}/download?format=zip", headers=h)
    assert z.status_code == 200 and z.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.data)) as zf:
        assert sorted(zf.namelist()) == ["splat/point_cloud.ply", "splat/preview.png"]
        assert zf.read("splat/point_cloud.ply").startswith(b"ply\n")
    assert_error(fn_apps.api.get(f"/requests/{rid}/download?format=tar", headers=h), 422, "invalid_format")


def test_uploads_hand_out_resumable_urls_under_an_ignored_prefix(fn_apps: FnApps, buckets: Buckets,
                                                                 fn_env: dict) -> None:
    from functions.intake.upload_events import request_from_object

    resp = post_json(fn_apps.api, "/uploads", {"session_id": "front-up", "files": [
        {"name": "a.jpg", "content_type": "image/jpeg"}, {"name": "b.jpg"}]})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    up = resp.get_json()
    prefix = f"gs://{buckets.uploads}/front-up/_api/uploads/{up['upload_id']}/"
    assert up["input"] == prefix and [f["object"] for f in up["files"]] == [prefix + "a.jpg", prefix + "b.jpg"]
    for f in up["files"]:
        opened = requests.request(f["method"], f["url"], headers=f["headers"], data=f["body"].encode(), timeout=30)
        done = requests.put(opened.headers["Location"], data=b"\xff\xd8" + bytes(50), timeout=30)
        assert done.status_code == 200
        obj = {"bucket": buckets.uploads, "name": f["object"].removeprefix(f"gs://{buckets.uploads}/")}
        assert isinstance(request_from_object(obj, buckets.uploads, (buckets.uploads,)), str)  # no second request
    names = sorted(b.name for b in gcs.client("splatpipe-local").list_blobs(buckets.uploads, prefix="front-up/"))
    assert names == [f"front-up/_api/uploads/{up['upload_id']}/a.jpg", f"front-up/_api/uploads/{up['upload_id']}/b.jpg"]
    video = post_json(fn_apps.api, "/uploads", {"session_id": "front-up", "files": [{"name": "clip.mov"}]}).get_json()
    assert video["input"] == video["files"][0]["object"]  # one video: the object itself is the input


@pytest.mark.parametrize("files", [None, [], [{"name": "../x.jpg"}], [{"name": "a/./b.jpg"}], [{"name": "_x"}],
                                   [{"name": "a.jpg"}, {"name": "a.jpg"}], [{"name": "a.jpg", "size": 3}],
                                   [{"name": "a.jpg", "content_type": "jpeg"}], ["a.jpg"]])
def test_uploads_refuse_bad_file_lists(fn_apps: FnApps, fn_env: dict, files: Any) -> None:
    body: dict[str, Any] = {"session_id": "front-bad"}
    if files is not None:
        body["files"] = files
    assert_error(post_json(fn_apps.api, "/uploads", body), 422, "invalid_files")


def test_task_routes_are_rate_limited(fn_apps: FnApps, buckets: Buckets, fn_env: dict,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rid, token = _trigger(fn_apps, buckets)
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "2")
    env = {"REMOTE_ADDR": "10.9.9.9"}
    assert fn_apps.api.get("/options", environ_base=env).headers["X-RateLimit-Remaining"] == "1"
    assert fn_apps.api.get(f"/requests/{rid}/download", headers={TOKEN: token}, environ_base=env).status_code == 409
    err = assert_error(fn_apps.api.post(f"/requests/{rid}/cancel", headers={TOKEN: token}, environ_base=env), 429,
                       "rate_limited")
    assert "minute" in err["message"]


def test_restart_clears_what_the_last_runs_stages_wrote_to_firestore(
        fn_apps: FnApps, buckets: Buckets, fn_env: dict, firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status overlays the stages' own Firestore progress; a rerun must not start from the last run's."""
    from functions.status.mirror import firestore_client

    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    rid, token = _trigger(fn_apps, buckets)
    _complete(fn_apps, buckets, rid)
    doc = firestore_client("splatpipe-local").collection("reconstructions").document(rid)
    doc.update({"progress.splat": 1.0, "stages.splat.message": "done: 1000 steps"})  # as a stage writes them
    assert fn_apps.api.get(f"/status/{rid}", headers={TOKEN: token}).get_json()["stages"]["splat"]["message"]
    st = fn_apps.api.post(f"/requests/{rid}/restart", headers={TOKEN: token}).get_json()
    assert st["state"] == "QUEUED" and st["progress"]["splat"] == 0 and st["stages"]["splat"]["message"] is None
    assert "progress" not in (doc.get().to_dict() or {})


def test_live_preview_route_and_its_time_in_the_status(fn_apps: FnApps, buckets: Buckets, fn_env: dict,
                                                       firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.status.mirror import firestore_client

    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    rid, token = _trigger(fn_apps, buckets)
    fn_apps.queue.get("/next")
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING"})
    err = assert_error(fn_apps.api.get(f"/requests/{rid}/live-preview?callback_token={token}"), 409, "wrong_state")
    assert "no live preview yet" in err["message"]
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    _put(buckets, f"jobs/{rid}/splat/live_preview.png", png)  # as the splat stage writes it
    firestore_client("splatpipe-local").collection("reconstructions").document(rid).update(
        {"stages.splat.live_preview_at": "2026-12-02T03:00:00Z"})
    resp = fn_apps.api.get(f"/requests/{rid}/live-preview?callback_token={token}")
    assert resp.status_code == 200 and resp.mimetype == "image/png" and resp.data == png
    assert resp.headers["Cache-Control"] == "no-store"
    assert_error(fn_apps.api.get(f"/requests/{rid}/live-preview?callback_token=nope"), 404, "not_found")
    st = fn_apps.api.get(f"/status/{rid}", headers={TOKEN: token}).get_json()
    assert st["stages"]["splat"]["live_preview_at"] == "2026-12-02T03:00:00Z"
    assert st["stages"]["frames"]["live_preview_at"] is None


def test_splat_latest_route_its_step_and_output_in_the_status(fn_apps: FnApps, buckets: Buckets, fn_env: dict,
                                                              firestore_host: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each checkpoint of the training publishes `splat/latest.spz` and notes its step (through the
    stage's own writers); the status names it as `outputs.splat_latest` with the step, the route
    serves it, and it never becomes one of the request's outputs (manifest, zip)."""
    import gzip

    from splat_snapshots import publish_snapshot, small_spz

    from batch_jobs.gaussians.spz import decode_spz
    from functions.lifecycle import downloads

    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    rid, token = _trigger(fn_apps, buckets)
    fn_apps.queue.get("/next")
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING"})
    route = f"/requests/{rid}/splat-latest"
    err = assert_error(fn_apps.api.get(route, headers={TOKEN: token}), 409, "wrong_state")
    assert "no splat snapshot yet" in err["message"]
    st = fn_apps.api.get(f"/status/{rid}", headers={TOKEN: token}).get_json()
    assert "splat_latest" not in st["outputs"]
    assert st["stages"]["splat"]["latest_splat_step"] is None and st["stages"]["splat"]["latest_splat_at"] is None

    ws = f"gs://{buckets.data}/jobs/{rid}"
    for step, n in ((100, 40), (200, 90)):
        data = small_spz(n, seed=step)
        publish_snapshot(ws, rid, step, data)
        resp = fn_apps.api.get(f"{route}?callback_token={token}")
        assert resp.status_code == 200 and resp.mimetype == "application/octet-stream" and resp.data == data
        assert resp.headers["Cache-Control"] == "no-store"
        assert len(decode_spz(gzip.decompress(resp.data))["means"]) == n
        for view in (fn_apps.api.get(f"/status/{rid}", headers={TOKEN: token}).get_json(),
                     fn_apps.queue.get(f"/status/{rid}").get_json()):
            splat = view["stages"]["splat"]
            assert splat["latest_splat_step"] == step and splat["latest_splat_at"].startswith("20")
            assert view["stages"]["frames"]["latest_splat_step"] is None
            assert view["outputs"]["splat_latest"] == f"{ws}/splat/latest.spz"
    assert_error(fn_apps.api.get(f"{route}?callback_token=nope"), 404, "not_found")
    with monkeypatch.context() as m:
        m.setattr(downloads, "MAX_LATEST_SPLAT_BYTES", 16)
        assert_error(fn_apps.api.get(route, headers={TOKEN: token}), 413, "result_too_large")

    scene = _put(buckets, f"jobs/{rid}/splat/scene.spz", small_spz(120, seed=1))
    assert put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "outputs": {"splat_spz": scene}}
                    ).status_code == 200
    manifest = fn_apps.api.get(f"/requests/{rid}/download", headers={TOKEN: token}).get_json()
    assert [f["name"] for f in manifest["files"]] == ["splat_spz"]
    with zipfile.ZipFile(io.BytesIO(fn_apps.api.get(f"/requests/{rid}/download?format=zip",
                                                    headers={TOKEN: token}).data)) as zf:
        assert zf.namelist() == ["splat/scene.spz"]
    st = fn_apps.api.get(f"/status/{rid}", headers={TOKEN: token}).get_json()
    assert set(st["outputs"]) == {"splat_spz", "splat_latest"}  # the last snapshot stays readable
    assert fn_apps.api.delete(f"/requests/{rid}", headers={TOKEN: token}).get_json()["state"] == "DELETED"
    st = fn_apps.api.get(f"/status/{rid}", headers={TOKEN: token}).get_json()
    assert "splat_latest" not in st["outputs"]
    assert_error(fn_apps.api.get(route, headers={TOKEN: token}), 409, "wrong_state")


def test_preview_png_is_small() -> None:
    import cv2
    import numpy as np

    from batch_jobs.splat.stage import LIVE_PREVIEW_MAX_HEIGHT, preview_png

    render = np.random.default_rng(0).random((1080, 1440, 3)).astype(np.float32)
    data = preview_png(render, render * 0.5, LIVE_PREVIEW_MAX_HEIGHT)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (LIVE_PREVIEW_MAX_HEIGHT, 1280, 3)
    full = cv2.imdecode(np.frombuffer(preview_png(render[:64, :64], render[:64, :64]), np.uint8), cv2.IMREAD_COLOR)
    assert full.shape == (64, 128, 3)
