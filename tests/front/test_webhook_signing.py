"""Webhooks are signed: a real HTTP receiver on 127.0.0.1 gets the headers and verifies them with
the snippet docs/api.md shows; tampered bodies, other secrets and old timestamps fail."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fn_testlib import RecordingServer

from functions.webhooks import sender as webhook
from functions.webhooks import signing as webhook_signing


def _documented_snippet() -> Any:
    """The receiver's `verify` exactly as docs/api.md shows it (its ## Webhooks section), executed."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = doc[doc.index("\n## Webhooks"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/api.md#webhooks", "exec"), scope)
    return scope["verify"]


documented_verify = _documented_snippet()


def test_delivered_webhooks_carry_a_verifiable_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret,older-secret")
    with RecordingServer(lambda method, path, body: (200, {})) as srv:
        got = webhook.deliver(f"http://{srv.host}/hook", {"request_id": "r1", "state": "COMPLETED"}, local=True)
        (method, path, body, headers), = srv.requests
    assert got.delivered and method == "POST" and path == "/hook"
    assert json.loads(body) == {"request_id": "r1", "state": "COMPLETED"}
    ts, sig = headers[webhook_signing.TIMESTAMP_HEADER], headers[webhook_signing.SIGNATURE_HEADER]
    assert abs(int(ts) - time.time()) < 60 and sig.count("v1=") == 2
    for secret in ("s3cret", "older-secret"):  # either side of a rotation verifies
        assert documented_verify(secret, body, ts, sig)
        assert webhook_signing.verify(body, ts, sig, secret)
    assert not documented_verify("wrong", body, ts, sig)
    assert not documented_verify("s3cret", body + b" ", ts, sig)
    assert not documented_verify("s3cret", body, str(int(ts) + 1), sig)


def test_replays_and_malformed_headers_fail() -> None:
    body = b'{"state":"FAILED"}'
    old = time.time() - 3600
    h = webhook_signing.headers(body, ("k",), now=old)
    assert webhook_signing.verify(body, h["X-Splatpipe-Timestamp"], h["X-Splatpipe-Signature"], "k", now=old)
    assert not webhook_signing.verify(body, h["X-Splatpipe-Timestamp"], h["X-Splatpipe-Signature"], "k")
    assert not webhook_signing.verify(body, "soon", h["X-Splatpipe-Signature"], "k")
    assert not webhook_signing.verify(body, h["X-Splatpipe-Timestamp"], "v0=abc", "k", now=old)


def test_no_secret_no_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    with RecordingServer(lambda method, path, body: (204, {})) as srv:
        webhook.deliver(f"http://{srv.host}/", {"state": "COMPLETED"}, local=True)
        (_, _, _, headers), = srv.requests
    assert webhook_signing.SIGNATURE_HEADER not in headers
