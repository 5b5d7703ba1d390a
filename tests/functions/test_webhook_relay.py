"""Webhooks are checked again when they are sent: `POST /webhook/{id}` on the queue function
sends the stored URL's webhook only to an address it has just checked."""

from __future__ import annotations

import json

import pytest
from fn_testlib import Buckets, FnApps, RecordingServer, assert_error, post_json, trigger_body

from core import pricing
from functions.webhooks import sender as webhook


def test_the_queue_sends_the_stored_webhook(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with RecordingServer(lambda m, p, b: (200, {"ok": True})) as srv:
        url = f"http://{srv.host}/hook?x=1"
        rid = post_json(fn_apps.api, "/trigger-reconstruction",
                        trigger_body(buckets, webhook_url=url)).get_json()["request_id"]
        body = {"request_id": rid, "state": "COMPLETED", "outputs": {}, "error": None, "warnings": []}
        resp = post_json(fn_apps.queue, f"/webhook/{rid}", body)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.get_json() == {"delivered": True, "status": 200, "error": None}
        ((method, path, sent, headers),) = srv.requests
        # The workflow's body, and the request's estimated cost from its record (none run yet).
        assert (method, path) == ("POST", "/hook?x=1") and json.loads(sent) == {**body, "cost": {
            "estimated_usd": 0.0, "stages": {}, "prices": pricing.PRICES.describe()}}
        assert headers["Content-Type"] == "application/json"
        # Off the local stack, the same stored loopback URL is refused when it is sent.
        monkeypatch.setenv("K_SERVICE", "queue")
        assert_error(post_json(fn_apps.queue, f"/webhook/{rid}", body), 422, "webhook_refused")
        assert len(srv.requests) == 1
    # The receiver gone: a 502, which the workflow's retry predicate retries.
    monkeypatch.delenv("K_SERVICE")
    assert_error(post_json(fn_apps.queue, f"/webhook/{rid}", body), 502, "webhook_failed")


def test_unknown_requests_and_requests_without_a_webhook(fn_apps: FnApps, fn_env: dict, buckets: Buckets) -> None:
    assert_error(post_json(fn_apps.queue, f"/webhook/{'0' * 32}", {}), 404, "not_found")
    rid = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 1)).get_json()["request_id"]
    assert_error(post_json(fn_apps.queue, f"/webhook/{rid}", {}), 404, "no_webhook")
    assert_error(post_json(fn_apps.queue, f"/webhook/{rid}", []), 422)


def test_a_name_that_now_resolves_inside_is_refused_at_sending() -> None:
    """Accepted while the name pointed at a public address; by sending time it points at 10/8."""
    answers = {"hooks.example": ["93.184.215.14"]}
    resolve = lambda host, port: answers[host]  # noqa: E731
    assert webhook.acceptance_refusal("hooks.example", 443, local=False, resolve=resolve) is None
    answers["hooks.example"] = ["10.0.0.7"]
    out = webhook.deliver("https://hooks.example/h", {"a": 1}, local=False, resolve=resolve, timeout=1)
    assert not out.delivered and out.error and out.error.startswith("refused") and "10.0.0.7" in out.error
    answers["hooks.example"] = ["93.184.215.14", "169.254.169.254"]
    out = webhook.deliver("https://hooks.example/h", {"a": 1}, local=False, resolve=resolve, timeout=1)
    assert not out.delivered and "169.254.169.254" in (out.error or "")
