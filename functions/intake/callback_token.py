"""Callback tokens: a random secret handed to the caller once; only its SHA-256 is stored.

The token alone lets its holder read the status of the one request it was issued for
(`GET /status?callback_token=…`, `GET /status/{id}` on the public api), so it is 32 random bytes
and never written anywhere in clear.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32


def new_token() -> tuple[str, str]:
    """(token, sha256 hex of it)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def matches(token: str, expected_digest: str) -> bool:
    """Constant-time comparison of a presented token against a stored digest."""
    return secrets.compare_digest(digest(token), expected_digest or "")
