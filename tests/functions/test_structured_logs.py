"""Structured logs (issue 20): the JSON lines core.logs writes, the events the control plane
emits as it applies changes (core.log_events), and the log route that reads a request's lines."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fn_testlib import Buckets, FnApps, assert_error, post_json, put_json, trigger_body
from test_openapi_contract import API_SCHEMA

from core import logs
from core.api import TOKEN_HEADER
from core.log_events import FIELDS, Event


class Lines:
    """What the root logger wrote, as parsed JSON lines."""

    def __init__(self, buf: io.StringIO) -> None:
        self.buf = buf

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.buf.getvalue().splitlines()]

    def events(self, event: Event, **match: Any) -> list[dict[str, Any]]:
        return [line for line in self.all() if line.get("event") == event.value
                and all(line.get(k) == v for k, v in match.items())]


@pytest.fixture
def lines() -> Iterator[Lines]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Lines(buf)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# --- the lines ----------------------------------------------------------------------------------

def test_a_line_is_one_json_object_in_cloud_loggings_shape(lines: Lines) -> None:
    with logs.context(request_id="r1", stage="sfm"):
        logging.getLogger("splatpipe.test").warning("two\nlines")
        with logs.context(stage="splat"):
            logs.emit(Event.STAGE_STARTED, request_id="r1", stage="splat")
    logging.getLogger("splatpipe.test").info("outside")
    first, event, outside = lines.all()
    assert first["severity"] == "WARNING" and first["message"] == "two\nlines" and first["logger"] == "splatpipe.test"
    assert first["request_id"] == "r1" and first["stage"] == "sfm" and first["time"].endswith("Z")
    assert event["event"] == "stage.started" and event["stage"] == "splat" and event["severity"] == "INFO"
    assert "request_id" not in outside and "stage" not in outside
    assert len(lines.buf.getvalue().splitlines()) == 3


def test_an_event_carries_only_its_own_fields() -> None:
    with pytest.raises(ValueError, match=r"queue\.stats has no field"):
        logs.emit(Event.QUEUE_STATS, queued=1, request_id="r")
    with pytest.raises(ValueError, match=r"stage\.started has no field"):
        logs.emit(Event.STAGE_STARTED, request_id="r", stage="sfm", state="RUNNING")


def test_no_secret_is_ever_written(lines: Lines) -> None:
    token = secrets.token_urlsafe(32)
    signed = ("https://storage.googleapis.com/b/jobs/r/splat/scene.spz?X-Goog-Algorithm=GOOG4-RSA-SHA256"
              "&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20261207%2Fauto%2Fstorage%2Fgoog4_request"
              "&X-Goog-Date=20261207T000000Z&X-Goog-Expires=3600&X-Goog-SignedHeaders=host&X-Goog-Signature=" + "ab" * 128)
    upload = "https://storage.googleapis.com/upload/storage/v1/b/u/o?uploadType=resumable&upload_id=ADPycdu" + "x" * 60
    log = logging.getLogger("splatpipe.test")
    log.info("status?callback_token=%s then %s and %s", token, signed, upload)
    log.info("headers %s", {TOKEN_HEADER: token, "Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})
    log.info("a bare token %s in a sentence", token)
    try:
        raise RuntimeError(f"GET /view/r?token={token} failed")
    except RuntimeError:
        log.exception("unexpected")
    with logs.context(request_id="r", callback_token=token):
        log.info("context")
    text = lines.buf.getvalue()
    for secret in (token, "ab" * 128, "x" * 60, "eyJhbGciOiJSUzI1NiJ9", "sa%40p"):
        assert secret not in text
    assert text.count(logs.REDACTED) >= 8
    # What identifies a request stays readable: ids (hex), digests, stage names, the object's path.
    rid, digest = secrets.token_hex(16), "f" * 64
    log.info("request %s digest %s file %s", rid, digest, "https://storage.googleapis.com/b/jobs/r/splat/scene.spz")
    assert rid in lines.buf.getvalue() and digest in lines.buf.getvalue()
    assert "jobs/r/splat/scene.spz" in lines.all()[-1]["message"]


# --- the events of the control plane ------------------------------------------------------------

def _trigger(fn_apps: FnApps, buckets: Buckets, n: int = 0, **extra: Any) -> dict[str, Any]:
    resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, n, **extra))
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return dict(resp.get_json())


def test_accepted_and_rejected(fn_apps: FnApps, fn_env: dict, buckets: Buckets, lines: Lines) -> None:
    acc = _trigger(fn_apps, buckets)
    assert [e["source"] for e in lines.events(Event.REQUEST_ACCEPTED, request_id=acc["request_id"])] == ["api"]
    dup = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets))
    assert dup.status_code == 200 and len(lines.events(Event.REQUEST_ACCEPTED)) == 1  # a duplicate is not new
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "s", "input": "gs://elsewhere/v.mp4"}),
                 422)
    (rejected,) = lines.events(Event.REQUEST_REJECTED)
    assert rejected["reason"] == "invalid" and rejected["source"] == "api" and rejected["error_code"]
    assert rejected["severity"] == "WARNING"
    for n in range(12):  # RATE_LIMIT_PER_MINUTE is 10 in fn_env
        post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 100 + n))
    limited = lines.events(Event.REQUEST_REJECTED, reason="rate_limited")
    assert limited and all(e["error_code"] == "rate_limited" for e in limited)
    assert_error(post_json(fn_apps.queue, "/enqueue", {"session_id": "s"}), 422)
    assert lines.events(Event.REQUEST_REJECTED, source="queue", reason="invalid")


def test_bad_upload_metadata_is_a_rejection(fn_apps: FnApps, fn_env: dict, buckets: Buckets, lines: Lines) -> None:
    from test_upload_events import deliver

    assert deliver(fn_apps.on_upload, buckets.uploads, "s/v.mp4", metadata={"priority": "urgent"}).status_code == 200
    deliver(fn_apps.on_upload, buckets.uploads, "s/notes.txt", content_type="text/plain")  # not a request at all
    (rejected,) = lines.events(Event.REQUEST_REJECTED)
    assert rejected["source"] == "upload" and rejected["reason"] == "invalid" and rejected["error_code"]
    deliver(fn_apps.on_upload, buckets.uploads, "s/good.mp4")
    assert [e["source"] for e in lines.events(Event.REQUEST_ACCEPTED)] == ["upload"]


def test_a_run_logs_each_stage_and_the_end_once(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                lines: Lines) -> None:
    rid = post_json(fn_apps.queue, "/enqueue", {"session_id": "s", "input": f"gs://{buckets.uploads}/s/v.mp4",
                                                "stages": ["frames", "sfm", "depth"]}).get_json()["request_id"]
    assert fn_apps.queue.get("/next").status_code == 200

    def put(body: dict[str, Any]) -> None:
        resp = put_json(fn_apps.queue, f"/status/{rid}", body)
        assert resp.status_code == 200, resp.get_data(as_text=True)

    put({"stage": "depth", "stage_state": "SKIPPED"})  # switched off: it never ran
    for _ in range(2):  # the workflow retries an update: it changes nothing the second time
        put({"stage": "frames", "stage_state": "RUNNING", "progress": {"frames": 0}})
    put({"stage": "frames", "stage_state": "SUCCEEDED"})
    put({"stage": "sfm", "stage_state": "RUNNING"})
    put({"state": "FAILED", "stage": "sfm", "stage_state": "FAILED",
         "error": {"code": "TOO_FEW_REGISTERED", "message": "3 of 40 photos placed"}})
    assert put_json(fn_apps.queue, f"/status/{rid}", {"state": "FAILED"}).status_code == 200  # again: no new event

    mine = [e for e in lines.all() if e.get("request_id") == rid and e.get("event")]
    assert [(e["event"], e.get("stage"), e.get("state")) for e in mine] == [
        ("request.accepted", None, None),
        ("stage.finished", "depth", "SKIPPED"),
        ("stage.started", "frames", None),
        ("stage.finished", "frames", "SUCCEEDED"),
        ("stage.started", "sfm", None),
        ("stage.finished", "sfm", "FAILED"),
        ("request.finished", None, "FAILED"),
    ]
    frames_done, sfm_failed, finished = mine[3], mine[5], mine[6]
    assert frames_done["duration_s"] >= 0 and "error_code" not in frames_done
    assert sfm_failed["error_code"] == "TOO_FEW_REGISTERED" and sfm_failed["severity"] == "WARNING"
    assert finished["error_code"] == "TOO_FEW_REGISTERED" and finished["duration_s"] >= 0
    for e in mine:
        assert set(e) - {"time", "severity", "message", "logger", "event"} <= set(FIELDS[Event(e["event"])])


def test_a_finished_stage_says_what_it_ran_on_and_cost(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                       services_now, lines: Lines,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from core import pricing
    from functions.status import events

    monkeypatch.delenv("PRICE_TABLE", raising=False)
    rid = _trigger(fn_apps, buckets)["request_id"]
    record = services_now().queue.get(rid)
    l4_spot = pricing.Machine("g2-standard-8", "SPOT", "nvidia-l4", 1).as_json()
    cpu = pricing.Machine("n2-standard-8", "STANDARD").as_json()
    record = dataclasses.replace(record, state="COMPLETED", updated_at=record.created_at + 700_000, stages={
        "frames": {"state": "SUCCEEDED", "started_at": 1_000, "finished_at": 91_000, pricing.STAGE_MACHINE_KEY: cpu},
        "splat": {"state": "SUCCEEDED", "started_at": 100_000, "finished_at": 700_000,
                  pricing.STAGE_MACHINE_KEY: l4_spot},
        "depth": {"state": "SKIPPED", "started_at": 95_000, "finished_at": 95_000}})
    for stage in ("frames", "splat", "depth"):
        events.stage_finished(record, stage, pricing.PRICES)
    events.request_finished(record, pricing.PRICES)
    done = {e["stage"]: e for e in lines.events(Event.STAGE_FINISHED)}
    splat, frames, depth = done["splat"], done["frames"], done["depth"]
    assert splat["duration_s"] == 600 and splat["gpu_seconds"] == 600 and splat["accelerator"] == "nvidia-l4"
    assert splat["machine_type"] == "g2-standard-8" and splat["provisioning_model"] == "SPOT"
    assert splat["cost_usd"] == round(pricing.stage_cost(record, "splat"), 6) > 0
    assert frames["gpu_seconds"] == 0 and frames["accelerator"] == "" and frames["cost_usd"] > 0
    assert "machine_type" not in depth and "cost_usd" not in depth  # no Batch job was made for it
    (finished,) = lines.events(Event.REQUEST_FINISHED)
    assert finished["cost_usd"] == pytest.approx(splat["cost_usd"] + frames["cost_usd"], abs=2e-6)
    assert finished["duration_s"] == 700


def test_a_cancel_finishes_the_request(fn_apps: FnApps, fn_env: dict, buckets: Buckets, lines: Lines) -> None:
    acc = _trigger(fn_apps, buckets)
    resp = fn_apps.api.post(f"/requests/{acc['request_id']}/cancel", headers={TOKEN_HEADER: acc["callback_token"]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (finished,) = lines.events(Event.REQUEST_FINISHED, request_id=acc["request_id"])
    assert finished["state"] == "CANCELLED" and "error_code" not in finished


def test_a_lease_expired_too_often_finishes_the_request(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                        services_now, lines: Lines,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from functions.dispatch import admission

    monkeypatch.setenv("LEASE_SECONDS", "1")
    monkeypatch.setenv("MAX_ATTEMPTS", "1")
    rid = _trigger(fn_apps, buckets)["request_id"]
    assert fn_apps.queue.get("/next").get_json()["request_id"] == rid  # a worker that vanishes
    time.sleep(1.15)
    admission.requeue_expired(services_now(), services_now().executor())  # no execution: not asked
    (finished,) = lines.events(Event.REQUEST_FINISHED, request_id=rid)
    assert finished["state"] == "FAILED" and finished["error_code"] == "lease_expired"


def test_dispatch_logs_the_queue(fn_apps: FnApps, fn_env: dict, buckets: Buckets, services_now,
                                 lines: Lines) -> None:
    from functions.dispatch import admission

    for n in range(3):
        _trigger(fn_apps, buckets, n)
    admission.log_queue_stats(services_now())
    admission.log_outbox(services_now(), 0)
    (stats,) = lines.events(Event.QUEUE_STATS)
    assert stats["queued"] == 3 and stats["running"] == 0 and stats["oldest_wait_s"] >= 0
    (outbox,) = lines.events(Event.OUTBOX_STATS)
    assert outbox["pending"] == 0 and outbox["oldest_pending_s"] == 0


# --- the log route ------------------------------------------------------------------------------

def _write(path: Path, *entries: dict[str, Any], junk: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        if junk:
            f.write("gunicorn: not a JSON line\n")
        for e in entries:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")


def test_the_log_route_pages_a_requests_lines_in_time_order(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "1000")
    acc = _trigger(fn_apps, buckets)
    rid, token = acc["request_id"], acc["callback_token"]
    at = "2099-01-01T00:00:0{}.000000Z".format
    _write(tmp_path / "fn-queue.log", {"time": at(1), "severity": "INFO", "message": "b", "request_id": rid},
           {"time": at(4), "severity": "INFO", "message": "e", "request_id": rid})
    _write(tmp_path / "workflows" / "batch" / "sp-frames-x" / "task0-attempt0.log",
           {"time": at(2), "severity": "INFO", "message": "c", "request_id": rid, "stage": "frames"},
           {"time": at(3), "severity": "INFO", "message": "d", "request_id": rid, "stage": "frames"},
           {"time": at(3), "severity": "INFO", "message": "someone else's", "request_id": "f" * 32})
    url = f"/requests/{rid}/log"
    assert_error(fn_apps.api.get(url), 401, "token_required")
    assert_error(fn_apps.api.get(url, headers={TOKEN_HEADER: secrets.token_urlsafe(32)}), 404)
    everything = fn_apps.api.get(url, headers={TOKEN_HEADER: token})
    assert everything.status_code == 200 and everything.headers["Cache-Control"] == "no-store"
    API_SCHEMA["/requests/{request_id}/log"]["GET"].validate_response(everything)  # functions/openapi.yaml
    page = everything.get_json()
    messages = [line["message"] for line in page["lines"]]
    # The api's own lines (request.accepted) were written to this test's stderr, not LOCAL_LOG_DIR.
    assert messages == ["b", "c", "d", "e"] and page["next_line"] == 4 and page["more"] is False
    assert page["state"] == "QUEUED" and page["lines"][1]["stage"] == "frames"
    resumed = fn_apps.api.get(f"{url}?line=2", headers={TOKEN_HEADER: token}).get_json()
    assert [line["message"] for line in resumed["lines"]] == ["d", "e"] and resumed["line"] == 2
    _write(tmp_path / "fn-api.log", {"time": at(5), "severity": "INFO", "message": "f", "request_id": rid}, junk=False)
    newer = fn_apps.api.get(f"{url}?line={page['next_line']}", headers={TOKEN_HEADER: token}).get_json()
    assert [line["message"] for line in newer["lines"]] == ["f"] and newer["next_line"] == 5
    for bad in ("-1", "x", "1.5", "²", "99999999999"):
        assert_error(fn_apps.api.get(f"{url}?line={bad}", headers={TOKEN_HEADER: token}), 422, "invalid_line")


def test_the_log_route_without_a_log_is_unavailable(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_LOG_DIR", raising=False)
    acc = _trigger(fn_apps, buckets)
    assert_error(fn_apps.api.get(f"/requests/{acc['request_id']}/log", headers={TOKEN_HEADER: acc["callback_token"]}),
                 503, "unavailable")


def test_cloud_logging_is_asked_for_the_requests_entries_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    from functions.lifecycle import request_log

    asked: list[dict[str, Any]] = []
    pages = [{"entries": [{"timestamp": "2099-01-01T00:00:01Z", "severity": "INFO",
                           "jsonPayload": {"message": "a", "request_id": "r1"}}], "nextPageToken": "p2"},
             {"entries": [{"timestamp": "2099-01-01T00:00:02Z", "jsonPayload": {"message": "b", "request_id": "r1"}}]}]

    class Session:
        def post(self, url: str, json: dict[str, Any], timeout: float) -> Any:
            asked.append(dict(json))
            body = pages[len(asked) - 1]
            return type("Resp", (), {"status_code": 200, "json": lambda self: body})()

    monkeypatch.setattr(request_log.CloudLogging, "_session", lambda self: Session())
    since = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    got = list(request_log.CloudLogging("proj").lines("r1", since, 10))
    assert [(g["message"], g["time"], g["severity"]) for g in got] == [
        ("a", "2099-01-01T00:00:01Z", "INFO"), ("b", "2099-01-01T00:00:02Z", "DEFAULT")]
    assert asked[0]["resourceNames"] == ["projects/proj"] and asked[0]["orderBy"] == "timestamp asc"
    assert asked[0]["filter"] == 'jsonPayload.request_id="r1" AND timestamp>="2099-01-01T00:00:00Z"'
    assert asked[1]["pageToken"] == "p2"
