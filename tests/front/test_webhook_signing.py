"""Webhooks are signed: a real HTTP receiver on 127.0.0.1 gets the headers and verifies them with
the README's snippet; tampered bodies, other secrets and old timestamps fail."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from fn_testlib import RecordingServer

from functions import webhook, webhook_signing


def readme_verify(secret: str, body: bytes, timestamp: str, signature: str, tolerance: int = 300) -> bool:
    """The receiver's check exactly as README.md shows it."""
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, part.strip()[3:])
               for part in signature.split(",") if part.strip().startswith("v1="))


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
        assert readme_verify(secret, body, ts, sig)
        assert webhook_signing.verify(body, ts, sig, secret)
    assert not readme_verify("wrong", body, ts, sig)
    assert not readme_verify("s3cret", body + b" ", ts, sig)
    assert not readme_verify("s3cret", body, str(int(ts) + 1), sig)


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
