"""The sliding-window limiter (real Redis) and how the caller is identified."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fn_testlib import Buckets, FnApps, RecordingServer, assert_error, post_json

from functions.edge.caller import IdTokenVerifier, caller_key, client_address
from functions.edge.json_api import http_error
from functions.errors import UnauthenticatedError
from functions.queue_store.rate_limit import SlidingWindowLimiter


def test_window_slides_rather_than_resets(redis_url: str) -> None:
    lim = SlidingWindowLimiter(redis.Redis.from_url(redis_url), limit=3, window_seconds=1.0)
    t0 = time.monotonic()
    assert lim.hit("a").allowed
    time.sleep(0.5)
    assert lim.hit("a").allowed and lim.hit("a").allowed
    refused = lim.hit("a")
    assert not refused.allowed and 300 <= refused.retry_after_ms <= 520  # when the first call leaves
    time.sleep(max(0.0, 1.05 - (time.monotonic() - t0)))
    # The first call left the window; the two from t=0.5 s have not: exactly one more fits.
    # (Fixed one-second buckets would now allow three.)
    assert lim.hit("a").allowed
    assert not lim.hit("a").allowed
    assert lim.hit("b").allowed  # callers are independent


def test_concurrent_hits_never_exceed_the_limit(redis_url: str) -> None:
    lim = SlidingWindowLimiter(redis.Redis.from_url(redis_url), limit=10, window_seconds=60)
    allowed: list[bool] = []
    barrier = threading.Barrier(20)

    def hit() -> None:
        barrier.wait()
        for _ in range(5):
            allowed.append(lim.hit("same").allowed)

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 10 and len(allowed) == 100


def test_limit_zero_disables(redis_url: str) -> None:
    lim = SlidingWindowLimiter(redis.Redis.from_url(redis_url), limit=0)
    assert all(lim.hit("x").allowed for _ in range(50))


@pytest.mark.parametrize("xff, peer, hops, expected", [
    (None, "192.0.2.1", 0, "192.0.2.1"),
    ("203.0.113.9", "192.0.2.1", 0, "192.0.2.1"),             # header ignored without trusted proxies
    ("203.0.113.9", "10.0.0.1", 1, "203.0.113.9"),            # Cloud Run: the entry it wrote
    ("6.6.6.6, 203.0.113.9", "10.0.0.1", 1, "203.0.113.9"),   # a client-written entry is skipped
    ("6.6.6.6, 203.0.113.9, 130.211.0.1", "10.0.0.1", 2, "203.0.113.9"),  # behind a load balancer too
    ("203.0.113.9", "10.0.0.1", 2, "10.0.0.1"),               # too few entries: the peer
    ("not-an-ip", "10.0.0.1", 1, "10.0.0.1"),
    ("2001:db8:1:2:3:4:5:6", "10.0.0.1", 1, "2001:db8:1:2::/64"),  # IPv6 per /64
    ("::ffff:198.51.100.7", "10.0.0.1", 1, "198.51.100.7"),
    (None, None, 0, "unknown"),
])
def test_client_address(xff: str | None, peer: str | None, hops: int, expected: str) -> None:
    assert client_address(xff, peer, hops) == expected


# --- verified principals ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signer() -> Iterator[dict[str, Any]]:
    """An RSA key and its self-signed certificate, served like Google's certificate endpoint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from google.auth import crypt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    certs = {"kid-1": cert.public_bytes(serialization.Encoding.PEM).decode()}
    server = RecordingServer(lambda m, p, b: (200, certs))
    server.__enter__()
    yield {"signer": crypt.RSASigner.from_string(pem_key, key_id="kid-1"), "url": f"http://{server.host}/certs",
           "server": server}
    server.__exit__()


def _token(signer: Any, **claims: Any) -> str:
    from google.auth import jwt

    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": "https://api.example", "iat": now, "exp": now + 600,
               "sub": "1234", "email": "ci@example.iam.gserviceaccount.com", "email_verified": True}
    payload.update(claims)
    return jwt.encode(signer, {k: v for k, v in payload.items() if v is not None}).decode()


def test_verified_principal(signer: dict) -> None:
    v = IdTokenVerifier(certs_url=signer["url"])
    s = signer["signer"]
    assert v.principal(_token(s), "https://api.example") == "principal:ci@example.iam.gserviceaccount.com"
    assert v.principal(_token(s, email=None, email_verified=None), "https://api.example") == "principal:sub:1234"
    for bad in (_token(s, aud="https://other"), _token(s, exp=int(time.time()) - 3600),
                _token(s, iss="https://evil.example"), "not.a.jwt", _token(s) + "x"):
        with pytest.raises(UnauthenticatedError) as err:
            v.principal(bad, "https://api.example")
        assert http_error(err.value).status == 401
    fetched = len(signer["server"].requests)
    v.principal(_token(s), "https://api.example")
    assert len(signer["server"].requests) == fetched  # certificates are cached


def test_bearer_is_ignored_without_an_audience() -> None:
    headers = {"Authorization": "Bearer whatever", "X-Forwarded-For": "1.2.3.4"}
    assert caller_key(headers, "10.0.0.1", trusted_hops=0, audience="", verifier=None) == "ip:10.0.0.1"


def test_principal_is_the_rate_limit_caller(fn_apps: FnApps, fn_env: dict, buckets: Buckets, monkeypatch,
                                            signer: dict, services_now) -> None:
    monkeypatch.setenv("AUTH_AUDIENCE", "https://api.example")
    svc = services_now()
    svc.verifier = IdTokenVerifier(certs_url=signer["url"])  # Google's certificate endpoint, stood in for
    alice = {"Authorization": f"Bearer {_token(signer['signer'], email='alice@example.com')}"}
    bob = {"Authorization": f"Bearer {_token(signer['signer'], email='bob@example.com')}"}
    for i in range(10):
        assert post_json(fn_apps.api, "/trigger-reconstruction", {"session_id": "p", "input":
                         f"gs://{buckets.uploads}/p/{i}.mp4"}, headers=alice).status_code == 202
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction",
                           {"session_id": "p", "input": f"gs://{buckets.uploads}/p/x.mp4"}, headers=alice), 429)
    # Same address, another principal: its own budget.
    assert post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "p", "input": f"gs://{buckets.uploads}/p/y.mp4"}, headers=bob).status_code == 202
    # A forged token is refused outright, never counted as someone new.
    forged = {"Authorization": "Bearer " + _token(signer["signer"], email="mallory@example.com")[:-4] + "AAAA"}
    assert_error(post_json(fn_apps.api, "/trigger-reconstruction",
                           {"session_id": "p", "input": f"gs://{buckets.uploads}/p/z.mp4"}, headers=forged), 401,
                 "invalid_token")
