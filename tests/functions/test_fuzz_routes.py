"""Every route, fuzzed where schemathesis does not reach (it covers the documented JSON bodies,
tests/functions/test_openapi_contract.py): hostile query strings, headers and non-JSON bodies,
any method, malformed path parameters. The invariant: every answer is a 2xx or 4xx, never a 5xx;
every 4xx is JSON `{"error": {"code", "message"}}`; every 2xx is JSON (but a 204, and the results
page's HTML and assets); and the service still answers afterwards."""

from __future__ import annotations

import json
import re
import string
import urllib.parse
from typing import Any

import pytest
from fn_testlib import Buckets, FnApps, post_json, trigger_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.edge import queue_api as queue_service
from functions.edge.routing import Route
from functions.webhooks import relay as webhook_relay

_FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["9" * 5000, "1" + "0" * 4300, "abc\n", "abc\r\n", "%00", "\x00", "-1", "+1", "0x10", "1e9",
                     "٣", " 1", "1 ", "\u202e", "a" * 5000, "../../etc/passwd", "null", "[]", "{}", "true",
                     "gs://x/../y", "https://169.254.169.254/", "\ud800", "0" * 40, "f" * 32, "F" * 32]),
    st.integers(-(10**30), 10**30).map(str),
)
QUERY_KEYS = ["session_id", "priority", "idempotency_key", "callback_token", "token", "format", "stage", "limit",
              "view", "pageSize", "offset"]
QUERY = st.dictionaries(st.one_of(st.sampled_from(QUERY_KEYS), st.text(min_size=1, max_size=8)), HOSTILE_TEXT,
                        max_size=4)
HEADER_TEXT = st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
                      .replace("\x0c", ""), max_size=60)
CONTENT_TYPES = st.one_of(st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "application/json; charset=utf-16", "APPLICATION/JSON", "video/mp4", "video/quicktime", "video/x-unknown",
    "application/octet-stream", "text/plain", "text/html", "multipart/form-data; boundary=xyz",
    "multipart/form-data", "application/x-www-form-urlencoded", "image/png", "", "*/*", ";;;", "application/",
]), HEADER_TEXT)
HEADERS = st.fixed_dictionaries({}, optional={
    "X-Callback-Token": HEADER_TEXT,
    "Authorization": st.one_of(st.just("Bearer "), HEADER_TEXT.map(lambda t: "Bearer " + t), HEADER_TEXT),
    "X-Forwarded-For": HEADER_TEXT,
    "If-None-Match": HEADER_TEXT,
    "Accept": HEADER_TEXT,
    "Accept-Encoding": st.sampled_from(["gzip", "br", "identity", "*", "gzip;q=0"]),
    "Range": HEADER_TEXT,
})
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False)
                       | st.text(max_size=20),
                       lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                                                 max_size=5), max_leaves=12)
BODIES = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=256).map(lambda b: b"\0\0\0\x18ftypisom" + b),
    st.sampled_from([b"", b"{", b'{"session_id": "a"', b"[" * 5000 + b"]" * 5000, b"\xff\xfe{\x00}\x00",
                     b'{"a": NaN}', b'{"a": Infinity}', b"1e999999", b'"' + b"\\u0000" * 100 + b'"']),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
NON_JSON_2XX = ("text/html", "text/css", "application/javascript", "text/javascript", "image/", "application/wasm",
                "font/")


def _segment() -> st.SearchStrategy[str]:
    """A path parameter: a plausible id (unknown), or anything that fits in one segment."""
    return st.one_of(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
                     HOSTILE_TEXT.filter(lambda s: "/" not in s and s not in ("", ".", "..")))


def _filled(pattern: str, values: tuple[str, ...]) -> str:
    it = iter(values)
    return re.sub(r"\{\w+\}", lambda _m: urllib.parse.quote(next(it).encode("utf-8", "surrogatepass"), safe=""),
                  pattern)


def _path(routes: tuple[Route, ...]) -> st.SearchStrategy[str]:
    def fill(pattern: str) -> st.SearchStrategy[str]:
        names = re.findall(r"\{(\w+)\}", pattern)
        if not names:
            return st.just(pattern)
        return st.tuples(*[_segment() for _ in names]).map(lambda vals: _filled(pattern, vals))
    known = st.sampled_from([r.pattern for r in routes]).flatmap(fill)
    other = st.text(max_size=30).map(lambda t: "/" + urllib.parse.quote(t.encode("utf-8", "surrogatepass")))
    return st.one_of(known, known, other)


def _q(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def check_answer(resp: Any, method: str) -> None:
    status = resp.status_code
    body = resp.get_data()
    assert status < 500, (status, body[:300])
    if status in (204, 304) or method == "HEAD":
        return
    media = resp.mimetype or ""
    if 200 <= status < 300 and media.startswith(NON_JSON_2XX):
        return
    assert media == "application/json", (status, media, body[:300])
    doc = json.loads(body)
    if status >= 400:
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
        assert isinstance(doc["error"]["code"], str) and doc["error"]["code"]
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    else:
        assert 200 <= status < 300, status


@pytest.fixture
def fuzz_env(fn_env: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "100000000")
    return fn_env


def _api_routes() -> tuple[Route, ...]:
    # As functions/main.py wires them (importing main here would register its error handlers on
    # an app that already served requests).
    from functions.edge import public_api, results_page, task_api

    return (*public_api.ROUTES, *task_api.ROUTES, *results_page.ROUTES)


def _fuzz(client: Any, routes: tuple[Route, ...]) -> None:
    @_FUZZ
    @given(method=METHODS, path=_path(routes), query=QUERY, headers=HEADERS, content_type=CONTENT_TYPES,
           body=BODIES)
    def one(method: str, path: str, query: dict, headers: dict, content_type: str, body: bytes) -> None:
        raw = "&".join(f"{_q(k)}={_q(v)}" for k, v in query.items())  # as bytes on the wire (lone surrogates too)
        kw: dict[str, Any] = {"query_string": raw, "headers": headers}
        if method not in ("GET", "HEAD", "OPTIONS") or body:
            kw["data"] = body
            if content_type:
                kw["content_type"] = content_type
        check_answer(client.open(path, method=method, **kw), method)

    one()


def test_fuzz_the_public_api(fn_apps: FnApps, fuzz_env: dict, buckets: Buckets) -> None:
    _fuzz(fn_apps.api, _api_routes())
    resp = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets, 999))
    assert resp.status_code == 202, resp.get_data(as_text=True)


def test_fuzz_the_queue_service(fn_apps: FnApps, fuzz_env: dict, buckets: Buckets) -> None:
    _fuzz(fn_apps.queue, tuple(queue_service.ROUTES) + tuple(webhook_relay.ROUTES))
    assert fn_apps.queue.get("/queue").status_code == 200
    assert post_json(fn_apps.queue, "/enqueue", trigger_body(buckets, 998)).status_code == 202


CE_HEADERS = st.fixed_dictionaries({}, optional={
    "ce-specversion": st.one_of(st.just("1.0"), HEADER_TEXT), "ce-type": st.one_of(
        st.just("google.cloud.storage.object.v1.finalized"), HEADER_TEXT),
    "ce-source": HEADER_TEXT, "ce-id": HEADER_TEXT, "ce-subject": HEADER_TEXT, "ce-time": HEADER_TEXT,
})


@_FUZZ
@given(headers=CE_HEADERS, content_type=CONTENT_TYPES, body=st.one_of(BODIES, JSONISH.map(
    lambda v: json.dumps({"bucket": "b", "name": v if isinstance(v, str) else "s/v.mp4", "metadata": v}).encode())))
def test_fuzz_the_upload_events(fn_apps: FnApps, fuzz_env: dict, headers: dict, content_type: str,
                                body: bytes) -> None:
    """A malformed event is a 4xx from the framework or ignored by us, never a 5xx (a 5xx makes
    Eventarc deliver it again, forever)."""
    resp = fn_apps.on_upload.post("/", headers=headers, data=body, content_type=content_type or None)
    assert resp.status_code < 500, (resp.status_code, resp.get_data()[:300])
