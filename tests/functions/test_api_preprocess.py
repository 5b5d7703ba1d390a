"""POST /preprocess-video: a direct upload or a gs:// reference becomes a frames-only request."""

from __future__ import annotations

from pathlib import Path

from fn_testlib import PROJECT, Buckets, FnApps, assert_error, post_json

from core import gcs
from functions.intake.video_upload import MAX_VIDEO_BYTES


def test_direct_upload_is_stored_and_queued_for_frames(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                       synthetic_video: dict[str, Path], services_now) -> None:
    video = synthetic_video["video"].read_bytes()
    resp = fn_apps.api.post("/preprocess-video?session_id=s-9&priority=1", data=video, content_type="video/mp4")
    assert resp.status_code == 202, resp.get_data(as_text=True)
    out = resp.get_json()
    job = out["job_id"]
    assert out["state"] == "QUEUED" and out["callback_token"]
    record = services_now().queue.get(job)
    assert record.stages_requested == ("frames",) and record.priority == 1
    bucket, name = record.input[5:].split("/", 1)
    assert bucket == buckets.uploads and name.startswith("s-9/_api/") and name.endswith(".mp4")
    stored = gcs.client(PROJECT).bucket(bucket).blob(name)
    assert stored.download_as_bytes() == video
    # The same video again: the same object, the same request.
    again = fn_apps.api.post("/preprocess-video?session_id=s-9&priority=1", data=video,
                             content_type="application/octet-stream")
    assert again.status_code == 200 and again.get_json()["job_id"] == job and again.get_json()["deduplicated"]
    st = fn_apps.api.get(f"/status?callback_token={out['callback_token']}").get_json()
    assert list(st["stages"]) == ["frames"]


def test_gs_reference(fn_apps: FnApps, fn_env: dict, buckets: Buckets, services_now) -> None:
    resp = post_json(fn_apps.api, "/preprocess-video",
                     {"session_id": "s", "input": f"gs://{buckets.uploads}/s/clip.mov", "options": {"max_frames": 40}})
    assert resp.status_code == 202
    record = services_now().queue.get(resp.get_json()["job_id"])
    assert record.stages_requested == ("frames",) and record.options["max_frames"] == 40
    assert_error(post_json(fn_apps.api, "/preprocess-video", {"session_id": "s", "input": "gs://elsewhere/c.mov"}),
                 422, "bucket_not_allowed")
    assert_error(post_json(fn_apps.api, "/preprocess-video",
                           {"session_id": "s", "input": f"gs://{buckets.uploads}/s/c.mov", "stages": ["sfm"]}),
                 422, "unknown_field")


def test_direct_upload_errors(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    mp4ish = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64
    too_big = fn_apps.api.post("/preprocess-video?session_id=s", data=b"\x00" * (MAX_VIDEO_BYTES + 1),
                               content_type="video/mp4")
    assert_error(too_big, 413, "payload_too_large")
    assert_error(fn_apps.api.post("/preprocess-video?session_id=s", data=b"hello, not a video",
                                  content_type="video/mp4"), 422, "not_a_video")
    assert_error(fn_apps.api.post("/preprocess-video?session_id=s", data=b"", content_type="video/mp4"),
                 422, "not_a_video")
    assert_error(fn_apps.api.post("/preprocess-video?session_id=s", data=mp4ish, content_type="image/png"),
                 415, "unsupported_media_type")
    assert_error(fn_apps.api.post("/preprocess-video", data=mp4ish, content_type="video/mp4"),
                 422, "invalid_session_id")
    assert_error(fn_apps.api.post("/preprocess-video?session_id=s&priority=high", data=mp4ish,
                                  content_type="video/mp4"), 422, "invalid_priority")
    assert_error(fn_apps.api.post("/preprocess-video?session_id=s&priority=12", data=mp4ish,
                                  content_type="video/mp4"), 422, "invalid_priority")
    assert_error(fn_apps.api.post("/preprocess-video?session_id=s&color=red", data=mp4ish,
                                  content_type="video/mp4"), 422, "unknown_field")
    ok = fn_apps.api.post("/preprocess-video?session_id=s", data=mp4ish, content_type="video/quicktime")
    assert ok.status_code == 202
