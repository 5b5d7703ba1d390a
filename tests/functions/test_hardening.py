"""Hostile input at the edge: query integers, identifiers with a trailing newline, webhook targets
inside our network, and bodies larger than a route takes."""

from __future__ import annotations

import pytest
from fn_testlib import Buckets, FnApps, assert_error, post_json, put_json, trigger_body

from functions import errors
from functions.edge.json_api import http_error
from functions.intake import validation

VIDEO = b"\0\0\0\x18ftypisom" + bytes(64)


# --- query integers (one bounded parser) -----------------------------------------------------------

@pytest.mark.parametrize("raw", ["9" * 5000, "1" + "0" * 4300, "-1", "10", "+1", " 1", "1 ", "1.0", "٣", "0x1", ""])
def test_a_bad_priority_in_the_query_is_a_422(fn_apps: FnApps, fn_env: dict, raw: str) -> None:
    resp = fn_apps.api.post("/preprocess-video", query_string={"session_id": "q", "priority": raw}, data=VIDEO,
                            content_type="video/mp4")
    assert_error(resp, 422, "invalid_priority")


def test_query_integer_parser_bounds_the_digits_before_converting() -> None:
    assert validation.query_int("7", "priority", 0, 9, "invalid_priority") == 7
    assert validation.query_int("007", "priority", 0, 9, "invalid_priority") == 7
    for raw in ("9" * 5000, "1e3", "¹", "10", "-0"):
        with pytest.raises(errors.InvalidRequestError) as err:
            validation.query_int(raw, "priority", 0, 9, "invalid_priority")
        assert http_error(err.value).status == 422 and err.value.code == "invalid_priority"


def test_upload_metadata_priority_uses_the_same_parser(fn_env: dict, buckets: Buckets) -> None:
    from functions.intake.upload_events import request_from_object

    data = {"bucket": buckets.uploads, "name": "s/v.mp4", "metadata": {"priority": "9" * 5000}}
    reason = request_from_object(data, buckets.uploads, (buckets.uploads,))
    assert isinstance(reason, str) and "priority" in reason


# --- identifiers: the whole string, no trailing newline --------------------------------------------

@pytest.mark.parametrize("sid", ["abc\n", "abc\r\n", "\nabc", "a\nb"])
def test_a_newline_in_a_session_id_is_refused(fn_apps: FnApps, fn_env: dict, buckets: Buckets, sid: str) -> None:
    body = trigger_body(buckets)
    body["session_id"] = sid
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", body), 422, "invalid_session_id")
    resp = fn_apps.api.post("/preprocess-video", query_string={"session_id": sid}, data=VIDEO,
                            content_type="video/mp4")
    assert_error(resp, 422, "invalid_session_id")


def test_every_identifier_pattern_refuses_a_trailing_newline(fn_apps: FnApps, fn_env: dict,
                                                            buckets: Buckets) -> None:
    rid = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets)).get_json()["request_id"]
    assert_error(fn_apps.queue.get(f"/status/{rid}%0A"), 404, "not_found")
    assert_error(put_json(fn_apps.queue, f"/status/{rid}%0A", {"state": "CANCELLED"}), 404, "not_found")
    with pytest.raises(errors.NotFoundError):
        validation.request_id(rid + "\n")
    body = trigger_body(buckets)
    body["input"] = f"gs://{buckets.uploads}\n/s/v.mp4"
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction", body), 422, "invalid_uri")
    assert_error(put_json(fn_apps.queue, f"/status/{rid}", {"outputs": {"mesh\n": "gs://b/x"}}), 422,
                 "invalid_outputs")
    for pattern in (validation.REQUEST_ID_RE, validation.SESSION_ID_RE, validation.BUCKET_RE,
                    validation.OUTPUT_NAME_RE):
        assert pattern.fullmatch("abcd" * 8 + "\n") is None
    assert fn_apps.api.get("/trigger-reconstruction%0A").status_code == 404


# --- webhook targets --------------------------------------------------------------------------------

INTERNAL = [
    "https://169.254.169.254/computeMetadata/v1/", "https://metadata.google.internal/x", "https://metadata/x",
    "https://10.0.0.1/h", "https://192.168.0.1/h", "https://172.16.5.4/h", "https://100.64.0.1/h",
    "https://[fd00::1]/h", "https://[fe80::1]/h", "https://[::ffff:10.0.0.1]/h", "https://[::ffff:169.254.169.254]/h",
    "https://0.0.0.0/h", "https://[::]/h", "https://224.0.0.1/h", "https://printer.local/h",
    "https://db.internal/h", "https://0x0a000001/h", "https://167772161/h", "https://10.1/h",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_webhooks_to_internal_addresses_are_refused(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                                   url: str) -> None:
    resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, webhook_url=url))
    assert_error(resp, 422, "invalid_webhook_url")


def test_loopback_webhooks_only_in_local_mode(fn_apps: FnApps, fn_env: dict, buckets: Buckets,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for n, url in enumerate(("http://127.0.0.1:8080/h", "http://localhost:9/h", "https://[::1]/h")):
        resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, n, webhook_url=url))
        assert resp.status_code == 202, resp.get_data(as_text=True)
    monkeypatch.setenv("K_SERVICE", "api")  # on Google Cloud
    for n, url in enumerate(("https://127.0.0.1/h", "https://localhost/h", "https://[::1]/h", "https://127.0.0.2/h")):
        resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 10 + n, webhook_url=url))
        assert_error(resp, 422, "invalid_webhook_url")


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    from functions.webhooks import sender as webhook

    def resolve(host: str, port: int) -> list[str]:
        return {"mixed.example": ["93.184.215.14", "10.1.2.3"], "ok.example": ["93.184.215.14", "2606:2800::1"],
                "none.example": []}[host]

    assert webhook.refusal("ok.example", 443, local=False, resolve=resolve) is None
    assert "10.1.2.3" in (webhook.refusal("mixed.example", 443, local=False, resolve=resolve) or "")
    assert webhook.refusal("none.example", 443, local=False, resolve=resolve) is not None
