"""Local Eventarc: real fake-gcs-server notifications on the real Pub/Sub emulator, relayed as
binary-mode CloudEvents to an HTTP endpoint (a recording server stands where the function is)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator import services
from emulator.relay import Relay, ensure_topic_and_subscription

PROJECT = services.DEFAULT_PROJECT


@pytest.fixture
def events(pubsub_service: services.Service, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """fake-gcs-server publishing to a fresh topic, and a relay subscription on it."""
    topic, sub = f"gcs-{uuid.uuid4().hex[:8]}", f"relay-{uuid.uuid4().hex[:8]}"
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_service.host
    ensure_topic_and_subscription(PROJECT, topic, sub, ack_deadline=10)
    gcs = services.start_gcs(tmp_path / "gcs", pubsub=pubsub_service, topic=topic, project=PROJECT)
    host = gcs.env["STORAGE_EMULATOR_HOST"]
    for bucket in ("uploads", "other"):
        requests.post(f"{host}/storage/v1/b", params={"project": PROJECT}, json={"name": bucket}, timeout=10)
    yield {"subscription": sub, "storage": host}
    gcs.stop()
    if old is None:
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    else:
        os.environ["PUBSUB_EMULATOR_HOST"] = old


def upload(storage_host: str, bucket: str, name: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
    import json

    boundary = "b0undary"
    meta = json.dumps({"name": name, "metadata": metadata or {}, "contentType": "video/mp4"})
    body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    r = requests.post(f"{storage_host}/upload/storage/v1/b/{bucket}/o", params={"uploadType": "multipart"},
                      data=body, headers={"Content-Type": f"multipart/related; boundary={boundary}"}, timeout=10)
    r.raise_for_status()


def pump(relay: Relay, until: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        relay.poll_once()
        time.sleep(0.05)


def test_finalize_events_become_binary_cloudevents_at_least_once(events: dict[str, Any], http_server: Any) -> None:
    # The function fails the first delivery: the event must come again.
    http_server.answer("/", (500, {"error": "try later"}), (204, {}))
    relay = Relay(PROJECT, events["subscription"], http_server.url + "/", bucket="uploads")
    upload(events["storage"], "other", "s1/ignored.mp4", b"x")  # not the trigger's bucket
    upload(events["storage"], "uploads", "s1/scene.mp4", b"video bytes", {"priority": "3"})
    pump(relay, lambda: len(http_server.calls("POST")) >= 2)
    first, second = http_server.calls("POST")[:2]
    assert first.headers["ce-id"] == second.headers["ce-id"]  # the same event, redelivered
    h = second.headers
    assert h["ce-specversion"] == "1.0" and h["ce-type"] == "google.cloud.storage.object.v1.finalized"
    assert h["ce-source"] == "//storage.googleapis.com/projects/_/buckets/uploads"
    assert h["ce-subject"] == "objects/s1/scene.mp4" and h["ce-bucket"] == "uploads" and h["ce-time"]
    assert h["Content-Type"] == "application/json"
    body = second.body
    assert body["bucket"] == "uploads" and body["name"] == "s1/scene.mp4" and body["generation"]
    assert body["metadata"] == {"priority": "3"} and int(body["size"]) == len(b"video bytes")
    # acked after the 2xx: nothing more arrives
    time.sleep(1.5)
    for _ in range(5):
        relay.poll_once()
    assert len(http_server.calls("POST")) == 2
    assert relay.delivered == 1


def test_relay_process_runs_until_sigterm(events: dict[str, Any], http_server: Any, pubsub_service: Any) -> None:
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_service.host}
    proc = subprocess.Popen([sys.executable, "-m", "emulator.relay", "--project", PROJECT, "--subscription",
                             events["subscription"], "--target", http_server.url + "/fn", "--bucket", "uploads"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        upload(events["storage"], "uploads", "s2/v.mp4", b"v")
        deadline = time.monotonic() + 30
        while not http_server.calls("POST", "/fn") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_server.calls("POST", "/fn")[0].headers["ce-subject"] == "objects/s2/v.mp4"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out
