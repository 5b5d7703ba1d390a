"""on_upload with real binary-mode CloudEvents (what Eventarc delivers)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fn_testlib import Buckets, FnApps

from core.record import Record

FINALIZED = "google.cloud.storage.object.v1.finalized"


def deliver(client: Any, bucket: str, name: str, generation: str = "1700000000000001", *,
            content_type: str = "video/mp4", metadata: dict | None = None, event_type: str = FINALIZED,
            event_id: str | None = None) -> Any:
    """POST one binary-mode CloudEvent (attributes in ce- headers, the object as the JSON body)."""
    data = {"kind": "storage#object", "bucket": bucket, "name": name, "generation": generation,
            "contentType": content_type, "size": "1234", "metageneration": "1",
            "timeCreated": "2025-01-01T00:00:00.000Z", "updated": "2025-01-01T00:00:00.000Z"}
    if metadata is not None:
        data["metadata"] = metadata
    headers = {
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-subject": f"objects/{name}",
        "ce-id": event_id or uuid.uuid4().hex,
        "ce-time": "2025-01-01T00:00:00.000Z",
    }
    return client.post("/", data=json.dumps(data), headers=headers, content_type="application/json")


def _records(services_now) -> list[Record]:
    q = services_now().queue
    return [q.get(k.split(":")[-1]) for k in q.r.scan_iter(match=q.prefix + "req:*")]


def test_a_video_upload_becomes_one_request(fn_apps: FnApps, fn_env: dict, buckets: Buckets, services_now) -> None:
    for _ in range(3):  # at-least-once delivery: the same generation, three times, new event ids
        resp = deliver(fn_apps.on_upload, buckets.uploads, "sess-7/walkaround.MP4")
        assert resp.status_code == 200, resp.get_data(as_text=True)
    records = _records(services_now)
    assert len(records) == 1
    rec = records[0]
    assert rec.input == f"gs://{buckets.uploads}/sess-7/walkaround.MP4" and rec.session_id == "sess-7"
    assert rec.source == "upload" and rec.state == "QUEUED" and rec.options == {"preset": "standard"}
    # A new generation of the object (uploaded again) is a new request.
    deliver(fn_apps.on_upload, buckets.uploads, "sess-7/walkaround.MP4", generation="1700000000000002")
    assert len(_records(services_now)) == 2


def test_marker_closes_an_image_prefix(fn_apps: FnApps, fn_env: dict, buckets: Buckets, services_now) -> None:
    for i in range(3):
        deliver(fn_apps.on_upload, buckets.uploads, f"s2/photos/img{i}.jpg", content_type="image/jpeg")
    assert _records(services_now) == []
    resp = deliver(fn_apps.on_upload, buckets.uploads, "s2/photos/_UPLOAD_COMPLETE", content_type="text/plain",
                   metadata={"priority": "1", "options": json.dumps({"preset": "preview"})})
    assert resp.status_code == 200
    (rec,) = _records(services_now)
    assert rec.input == f"gs://{buckets.uploads}/s2/photos/" and rec.priority == 1
    assert rec.options == {"preset": "preview"}


@pytest.mark.parametrize("name, content_type, metadata, bucket_is_uploads", [
    ("s/notes.txt", "text/plain", None, True),                      # not a video
    ("video.mp4", "video/mp4", None, True),                         # no session prefix
    ("s/_api/abc.mp4", "video/mp4", None, True),                    # stored by /preprocess-video
    ("s/v.mp4", "video/mp4", None, False),                          # another bucket
    ("bad session!/v.mp4", "video/mp4", None, True),                # not a session id
    ("s/../v.mp4", "video/mp4", None, True),                        # traversal
    ("s/v.mp4", "video/mp4", {"priority": "urgent"}, True),         # bad metadata
    ("s/v.mp4", "video/mp4", {"options": "{\"bogus\": 1}"}, True),  # bad options
])
def test_ignored_objects(fn_apps: FnApps, fn_env: dict, buckets: Buckets, services_now, name: str,
                         content_type: str, metadata: dict | None, bucket_is_uploads: bool) -> None:
    bucket = buckets.uploads if bucket_is_uploads else buckets.data
    resp = deliver(fn_apps.on_upload, bucket, name, content_type=content_type, metadata=metadata)
    assert resp.status_code == 200
    assert _records(services_now) == []


def test_other_event_types_are_ignored(fn_apps: FnApps, fn_env: dict, buckets: Buckets, services_now) -> None:
    resp = deliver(fn_apps.on_upload, buckets.uploads, "s/v.mp4", event_type="google.cloud.storage.object.v1.deleted")
    assert resp.status_code == 200 and _records(services_now) == []


def test_redis_down_fails_the_delivery_so_it_is_retried(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                        monkeypatch) -> None:
    from emulator.processes import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    resp = deliver(fn_apps.on_upload, buckets.uploads, "s/v.mp4")
    assert resp.status_code >= 500
