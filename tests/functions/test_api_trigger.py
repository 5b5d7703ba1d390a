"""The public api: trigger, dedup, rate limit, status by callback token, and bad input."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from fn_testlib import Buckets, FnApps, assert_error, post_json, trigger_body


def test_trigger_accepts(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                 services_now) -> None:
    body = trigger_body(buckets, priority=2, options={"preset": "preview", "splat_steps": 500},
                        webhook_url="https://example.com/hook")
    resp = post_json(fn_apps.api, "/trigger-reconstruction", body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    out = resp.get_json()
    rid = out["request_id"]
    assert len(rid) == 32 and out["state"] == "QUEUED" and out["deduplicated"] is False
    assert out["status_url"] == f"/status/{rid}"
    token = out["callback_token"]
    assert len(token) >= 43  # 32 random bytes, url-safe base64

    # The token is stored only as its SHA-256.
    svc = services_now()
    raw = svc.queue.get_raw(rid)
    assert token not in json.dumps(raw)
    assert svc.queue.get(rid).callback_token_sha256 == hashlib.sha256(token.encode()).hexdigest()

    # What request.json (docs/contracts.md "request.json") will say: dispatch writes it before the
    # execution starts, off the trigger's path (tests/functions/test_fast_accept.py).
    assert svc.queue.get(rid).request_json() == {
        "request_id": rid, "input": body["input"], "options": {"preset": "preview", "splat_steps": 500},
        "stages": ["frames", "sfm", "depth", "splat", "mesh"]}

    # Status by token, and by id with the token.
    st = fn_apps.api.get(f"/status?callback_token={token}")
    assert st.status_code == 200
    doc = st.get_json()
    assert doc["request_id"] == rid and doc["state"] == "QUEUED" and doc["priority"] == 2
    assert doc["stages"]["frames"]["state"] == "PENDING" and doc["progress"] == dict.fromkeys(doc["stages"], 0.0)
    assert doc["created_at"].endswith("Z") and doc["error"] is None and doc["outputs"] == {}
    assert "webhook_url" not in doc and "callback_token_sha256" not in doc
    by_id = fn_apps.api.get(f"/status/{rid}", headers={"X-Callback-Token": token})
    assert by_id.status_code == 200 and by_id.get_json() == doc


def test_status_on_the_public_api_needs_the_right_token(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    a = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 1)).get_json()
    b = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 2)).get_json()
    assert_error(fn_apps.api.get(f"/status/{a['request_id']}"), 401, "token_required")
    assert_error(fn_apps.api.get("/status"), 401, "token_required")
    # b's token does not open a's status; an unknown token finds nothing.
    assert_error(fn_apps.api.get(f"/status/{a['request_id']}?callback_token={b['callback_token']}"), 404)
    assert_error(fn_apps.api.get("/status?callback_token=not-a-token"), 404)
    assert_error(fn_apps.api.get(f"/status/{'0' * 32}?callback_token={a['callback_token']}"), 404)
    assert fn_apps.api.get(f"/status/{a['request_id']}?callback_token={a['callback_token']}").status_code == 200
    # The queue function (IAM-only) serves it by id alone.
    assert fn_apps.queue.get(f"/status/{a['request_id']}").status_code == 200


def test_dedup_by_fingerprint_and_idempotency_key(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                   services_now) -> None:
    body = trigger_body(buckets, options={"preset": "high"})
    first = post_json(fn_apps.api, "/trigger-reconstruction", body).get_json()
    again = post_json(fn_apps.api, "/trigger-reconstruction", body)
    assert again.status_code == 200
    dup = again.get_json()
    assert dup["request_id"] == first["request_id"] and dup["deduplicated"] is True
    assert "callback_token" not in dup
    # Options normalise before fingerprinting: {"preset": "standard"} == {} (the default).
    a = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 7)).get_json()
    b = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 7, options={"preset": "standard"}))
    assert b.status_code == 200 and b.get_json()["request_id"] == a["request_id"]
    # Different options: a new request.
    c = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 7, options={"preset": "preview"}))
    assert c.status_code == 202
    # Idempotency key: the same key answers with the same request even with another input.
    k1 = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 8, idempotency_key="k-1")).get_json()
    k2 = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 9, idempotency_key="k-1"))
    assert k2.status_code == 200 and k2.get_json()["request_id"] == k1["request_id"]
    assert services_now().queue.stats()["counts"]["QUEUED"] == 4


def test_dedup_window_and_failed_requests(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch,
                                          services_now) -> None:
    body = trigger_body(buckets, 3)
    first = post_json(fn_apps.api, "/trigger-reconstruction", body).get_json()
    # A FAILED request does not swallow a retry of the same submission.
    svc = services_now()
    svc.queue.update(first["request_id"], {"state": "CANCELLED"}, 60)
    retry = post_json(fn_apps.api, "/trigger-reconstruction", body)
    assert retry.status_code == 202 and retry.get_json()["request_id"] != first["request_id"]
    # Past the window the same submission is new again.
    monkeypatch.setenv("DEDUP_WINDOW_SECONDS", "1")
    body2 = trigger_body(buckets, 4)
    x = post_json(fn_apps.api, "/trigger-reconstruction", body2).get_json()
    assert post_json(fn_apps.api, "/trigger-reconstruction", body2).get_json()["request_id"] == x["request_id"]
    time.sleep(2.1)
    y = post_json(fn_apps.api, "/trigger-reconstruction", body2)
    assert y.status_code == 202 and y.get_json()["request_id"] != x["request_id"]


def test_eleventh_trigger_in_a_minute_is_429(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    t0 = time.time()
    for i in range(10):
        r = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 100 + i))
        assert r.status_code == 202, r.get_data(as_text=True)
        assert r.headers["X-RateLimit-Remaining"] == str(9 - i)
    r = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 111))
    assert_error(r, 429, "rate_limited")
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60 - int(time.time() - t0) + 1
    # Another caller is not limited by the first one's calls.
    other = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 112),
                      environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 202


def test_an_accepted_trigger_is_one_redis_call_that_also_counts_the_rate_limit(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate limit and the accept are one script (one round trip, one fsync); the limit still
    counts every call: bad input and duplicates too, and a call over it enqueues nothing."""
    import redis

    sent: list[str] = []
    real = redis.Redis.execute_command

    def counting(self: redis.Redis, *args: Any, **kw: Any) -> Any:
        sent.append(str(args[0]))
        return real(self, *args, **kw)

    monkeypatch.setattr(redis.Redis, "execute_command", counting)

    def calls() -> int:
        return len(sent)

    post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 0))  # scripts loaded
    before = calls()
    ok = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 1))
    assert ok.status_code == 202 and ok.headers["X-RateLimit-Remaining"] == "8"
    assert calls() - before == 1
    dup = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 1))
    assert dup.status_code == 200 and dup.headers["X-RateLimit-Remaining"] == "7"
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "x"}), 422)
    for i in range(6):
        assert post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 10 + i)).status_code == 202
    queued = fn_apps.queue.get("/queue").get_json()["counts"]["QUEUED"]
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 20)), 429, "rate_limited")
    assert fn_apps.queue.get("/queue").get_json()["counts"]["QUEUED"] == queued  # nothing enqueued over the limit
    # Over the limit, bad input hears 429 too (the limit comes first, as on every route).
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "x"}), 429, "rate_limited")


def test_a_caller_over_the_limit_never_gets_its_webhook_resolved(
        fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body with a webhook is counted before the webhook's host is looked up, once."""
    from functions.webhooks import sender as webhook

    looked_up: list[str] = []
    real = webhook.acceptance_refusal
    monkeypatch.setattr(webhook, "acceptance_refusal",
                        lambda host, *a, **kw: looked_up.append(host) or real(host, *a, **kw))
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "2")
    hook = {"webhook_url": "https://hooks.example.com/x"}
    ok = post_json(fn_apps.api, "/trigger-reconstruction", {**trigger_body(buckets, 1), **hook})
    assert ok.status_code in (202, 422) and ok.headers.get("X-RateLimit-Remaining", "1") == "1"
    assert looked_up == ["hooks.example.com"]
    assert post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 2)).status_code == 202
    over = post_json(fn_apps.api, "/trigger-reconstruction", {**trigger_body(buckets, 3), **hook})
    assert_error(over, 429, "rate_limited")
    assert looked_up == ["hooks.example.com"]  # not looked up again


def test_forwarded_for_cannot_bypass_the_limit(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                               monkeypatch) -> None:
    # No trusted proxy: the header is ignored, the peer address counts.
    for i in range(10):
        r = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, i),
                      headers={"X-Forwarded-For": f"203.0.113.{i}"})
        assert r.status_code == 202
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 50),
                           headers={"X-Forwarded-For": "198.51.100.1"}), 429)
    # One trusted proxy (Cloud Run's front end): the entry it appended counts, not what the client wrote.
    monkeypatch.setenv("TRUSTED_PROXY_HOPS", "1")
    for i in range(10):
        r = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 60 + i),
                      headers={"X-Forwarded-For": f"1.1.1.{i}, 192.0.2.7"})
        assert r.status_code == 202
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 80),
                           headers={"X-Forwarded-For": "9.9.9.9, 192.0.2.7"}), 429)


@pytest.mark.parametrize("data, content_type, status, code", [
    ("{not json", "application/json", 400, "malformed_json"),
    ("", "application/json", 400, "malformed_json"),
    ("[1, 2]", "application/json", 422, "invalid_request"),
    ('{"session_id": "s", "input": "gs://B/v.mp4", "NaN": NaN}', "application/json", 400, "malformed_json"),
    ("session_id=s", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ('{"session_id": "s"}', "text/plain", 415, "unsupported_media_type"),
])
def test_malformed_bodies(fn_apps: FnApps, fn_env: dict, buckets: Buckets, data: str, content_type: str,
                          status: int, code: str) -> None:
    resp = fn_apps.api.post("/trigger-reconstruction", data=data.replace("B", buckets.uploads),
                            content_type=content_type)
    assert_error(resp, status, code)


@pytest.mark.parametrize("change, code", [
    ({"bogus": 1}, "unknown_field"),
    ({"priority": 10}, "invalid_priority"),
    ({"priority": -1}, "invalid_priority"),
    ({"priority": "1"}, "invalid_priority"),
    ({"priority": True}, "invalid_priority"),
    ({"priority": 1.5}, "invalid_priority"),
    ({"session_id": ""}, "invalid_session_id"),
    ({"session_id": "../etc"}, "invalid_session_id"),
    ({"session_id": "a" * 129}, "invalid_session_id"),
    ({"session_id": 7}, "invalid_session_id"),
    ({"input": "gs://other-bucket/v.mp4"}, "bucket_not_allowed"),
    ({"input": "gs://UP/sess/../secret.mp4"}, "invalid_uri"),
    ({"input": "gs://UP/sess/./v.mp4"}, "invalid_uri"),
    ({"input": "gs://UP//v.mp4"}, "invalid_uri"),
    ({"input": "gs://UP"}, "invalid_uri"),
    ({"input": "gs://UP/"}, "invalid_uri"),
    ({"input": "https://UP/v.mp4"}, "invalid_uri"),
    ({"input": "gs://UP/v\u0000.mp4"}, "invalid_uri"),
    ({"input": "gs://UP/v\ud800.mp4"}, "invalid_uri"),
    ({"input": 5}, "invalid_uri"),
    ({"options": {"preset": "ultra"}}, "invalid_options"),
    ({"options": {"bogus": 1}}, "invalid_options"),
    ({"options": []}, "invalid_options"),
    ({"webhook_url": "http://example.com/x"}, "invalid_webhook_url"),
    ({"webhook_url": "https://user:pw@example.com/x"}, "invalid_webhook_url"),
    ({"webhook_url": "ftp://example.com"}, "invalid_webhook_url"),
    ({"idempotency_key": ""}, "invalid_idempotency_key"),
    ({"idempotency_key": "a\nb"}, "invalid_idempotency_key"),
])
def test_invalid_fields_are_422(fn_apps: FnApps, fn_env: dict, buckets: Buckets, change: dict, code: str) -> None:
    body = trigger_body(buckets)
    for k, v in change.items():
        body[k] = v.replace("UP", buckets.uploads) if isinstance(v, str) else v
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", body), 422, code)


def test_missing_fields_and_extra_buckets(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch) -> None:
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "s"}), 422, "invalid_uri")
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", {"input": "gs://x/y"}), 422, "invalid_session_id")
    monkeypatch.setenv("EXTRA_INPUT_BUCKETS", "shared-videos, more")
    ok = post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "s", "input": "gs://shared-videos/a/"})
    assert ok.status_code == 202


def test_too_large_body_is_413(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    body = trigger_body(buckets, idempotency_key="k")
    big = json.dumps(body)[:-1] + ', "pad": "' + "x" * 70_000 + '"}'
    assert_error(fn_apps.api.post("/trigger-reconstruction", data=big, content_type="application/json"),
                 413, "payload_too_large")


def test_routes_and_methods(fn_apps: FnApps, fn_env: dict) -> None:
    assert_error(fn_apps.api.get("/nope"), 404, "not_found")
    assert_error(fn_apps.api.get("/"), 404)
    assert_error(fn_apps.api.get("/favicon.ico"), 404)
    r = assert_error(fn_apps.api.get("/trigger-reconstruction"), 405, "method_not_allowed")
    assert r
    assert fn_apps.api.get("/trigger-reconstruction").headers["Allow"] == "POST"
    assert_error(fn_apps.api.delete("/status/" + "a" * 32), 405)
    assert_error(fn_apps.api.get("/next"), 404)  # a queue route, not on the public api
    assert_error(fn_apps.queue.post("/trigger-reconstruction"), 404)
    assert_error(fn_apps.queue.get("/status/not-an-id"), 404)
    assert_error(fn_apps.dispatch.put("/"), 405)


def test_redis_down_is_503_not_500(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch) -> None:
    from emulator.processes import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets))
    assert_error(resp, 503, "unavailable")
    assert resp.headers["Retry-After"]


def test_bad_configuration_is_a_json_error(fn_apps: FnApps, fn_env: dict, monkeypatch) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "many")
    assert_error(fn_apps.queue.get("/queue"), 500, "configuration_error")
