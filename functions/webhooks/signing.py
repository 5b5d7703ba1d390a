"""Webhook signatures: HMAC-SHA256 over the timestamp and the exact body bytes sent.

Every webhook carries two headers:

  X-Splatpipe-Timestamp: 1767312000                  (Unix seconds when it was sent)
  X-Splatpipe-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>

A receiver recomputes the HMAC with the shared secret over the raw body it received, compares in
constant time, and refuses a timestamp more than :data:`TOLERANCE_SECONDS` old (a replay). The
secret is the `WEBHOOK_SECRET` environment variable of the function that sends; on Google Cloud
it is bound from Secret Manager to that variable
(https://cloud.google.com/functions/docs/configuring/secrets#making_a_secret_accessible_to_a_function).
Rotating: `WEBHOOK_SECRET` may hold several secrets separated by commas; the first signs, and a
header carries one `v1=` entry per secret so receivers on either side of a rotation verify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

SIGNATURE_HEADER = "X-Splatpipe-Signature"
TIMESTAMP_HEADER = "X-Splatpipe-Timestamp"
SCHEME = "v1"
TOLERANCE_SECONDS = 300
SECRET_ENV = "WEBHOOK_SECRET"


def secrets_from_env() -> tuple[str, ...]:
    """The configured signing secrets (empty: webhooks go out unsigned)."""
    return tuple(s.strip() for s in os.environ.get(SECRET_ENV, "").split(",") if s.strip())


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def headers(body: bytes, secrets: tuple[str, ...], now: float | None = None) -> dict[str, str]:
    """The signature headers for `body` (none when no secret is configured)."""
    if not secrets:
        return {}
    ts = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: ",".join(f"{SCHEME}={_mac(s, ts, body)}" for s in secrets)}


def verify(body: bytes, timestamp: str, signature: str, secret: str, now: float | None = None,
           tolerance: float = TOLERANCE_SECONDS) -> bool:
    """True when `signature` (the header) signs `body` at `timestamp` with `secret`, recently."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    want = _mac(secret, ts, body)
    found = [part.split("=", 1)[1] for part in signature.split(",") if part.strip().startswith(f"{SCHEME}=")]
    return any(hmac.compare_digest(want, f.strip()) for f in found)
