"""Who is calling, for rate limiting — a key no client can choose for itself.

1. With `AUTH_AUDIENCE` set, a request carrying `Authorization: Bearer <Google ID token>` is the
   token's principal, once the token's signature (Google's keys), issuer, expiry and audience
   check out. A token that does not is a 401, never an anonymous pass.
2. Otherwise the client address. `X-Forwarded-For` is a list anyone can start; only the entries
   appended by our own front proxies are true. With `TRUSTED_PROXY_HOPS` = N the caller is the
   N-th entry from the right (Cloud Run's front end writes the address it saw there: N = 1); with
   N = 0 the header is ignored and the TCP peer address is used. Too few entries, or an entry
   that is not an IP address, falls back to the peer address.
3. IPv6 addresses are limited per /64: one host usually owns a whole /64 and could rotate
   through it.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.datastructures import Headers

from functions.errors import UnauthenticatedError, UnavailableError

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


def client_address(forwarded_for: str | None, peer: str | None, trusted_hops: int) -> str:
    """The caller's address per the rules above, normalised ("unknown" without one)."""
    candidate = peer or ""
    if trusted_hops > 0 and forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",")]
        if len(hops) >= trusted_hops:
            candidate = hops[-trusted_hops]
    try:
        addr = ipaddress.ip_address(candidate.strip("[]"))
    except ValueError:
        try:
            addr = ipaddress.ip_address((peer or "").strip("[]"))
        except ValueError:
            return "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class IdTokenVerifier:
    """Verifies Google-signed ID tokens against Google's published certificates (cached an hour)."""

    def __init__(self, certs_url: str = GOOGLE_CERTS_URL, fetch: Callable[[str], Mapping[str, str]] | None = None,
                 cache_seconds: float = 3600.0) -> None:
        self.certs_url = certs_url
        self._fetch = fetch or _fetch_certs
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] | None = None
        self._fetched = 0.0

    def _current_certs(self, refresh: bool = False) -> Mapping[str, str]:
        with self._lock:
            if refresh or self._certs is None or time.monotonic() - self._fetched > self.cache_seconds:
                self._certs = self._fetch(self.certs_url)
                self._fetched = time.monotonic()
            return self._certs

    def principal(self, token: str, audience: str) -> str:
        """The verified principal ("email" when verified, else "sub"); UnauthenticatedError otherwise."""
        from google.auth import exceptions, jwt

        try:
            header = jwt.decode_header(token)
            certs = self._current_certs()
            if header.get("kid") not in certs:  # keys rotate: one refetch
                certs = self._current_certs(refresh=True)
            claims: dict[str, Any] = jwt.decode(token, certs=certs, audience=audience, clock_skew_in_seconds=10)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise UnauthenticatedError(f"the bearer token is not a valid ID token for this API: {exc}") from None
        except Exception as exc:  # Google's certificates unreachable: not the caller's fault
            raise UnavailableError(f"cannot verify the bearer token now: {type(exc).__name__}", retry_after=5) from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise UnauthenticatedError("the bearer token was not issued by Google")
        if claims.get("email") and claims.get("email_verified"):
            return "principal:" + str(claims["email"]).lower()
        if not claims.get("sub"):
            raise UnauthenticatedError("the bearer token names no subject", challenge=False)
        return "principal:sub:" + str(claims["sub"])


def _fetch_certs(url: str) -> Mapping[str, str]:
    import requests

    resp = requests.get(url, timeout=5)
    resp.raise_for_status()
    certs = resp.json()
    if not isinstance(certs, dict):
        raise ValueError("certificate endpoint returned no object")
    return certs


def caller_key(headers: Headers | Mapping[str, str], peer: str | None, *, trusted_hops: int, audience: str,
               verifier: IdTokenVerifier | None) -> str:
    """The rate-limit key of a request."""
    auth = headers.get("Authorization", "")
    if audience and verifier is not None and auth[:7].lower() == "bearer ":
        return verifier.principal(auth[7:].strip(), audience)
    return "ip:" + client_address(headers.get("X-Forwarded-For"), peer, trusted_hops)
