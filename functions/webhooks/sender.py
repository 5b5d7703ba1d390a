"""Webhook targets: only hosts on the public internet, judged when a request is accepted and again
when the webhook is sent, to the very address that was judged.

A webhook URL is the one place a caller makes our services open a connection of their choosing.
Inside Google Cloud that could reach the metadata server (169.254.169.254,
`metadata.google.internal`: credentials), the VPC (10/8, 172.16/12, 192.168/16, CGNAT 100.64/10,
IPv6 ULA fc00::/7) or the instance itself (loopback). Every address a host name resolves to must
be global unicast; names that only exist inside a network (`.internal`, `.local`, `.localhost`,
`metadata`) are refused without a lookup. Loopback is allowed only in local mode, where the local
stack's own test servers listen on 127.0.0.1.

At acceptance the name is resolved within a short budget: a name that resolves to an internal
address is refused; one that does not resolve right now is accepted, because the check that
matters is the one at sending time (DNS answers change: a name can point at a public address
today and at 10.0.0.1 when the webhook goes out). :func:`deliver` resolves again, refuses if any
address is internal, and connects to the checked address itself (no second lookup by the HTTP
client, no redirects followed), sending the original host name in `Host` and TLS SNI.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import ipaddress
import json
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from functions.webhooks import signing as webhook_signing

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]

INTERNAL_NAMES = frozenset({"metadata", "metadata.google.internal", "localhost"})
INTERNAL_SUFFIXES = (".internal", ".local", ".localhost", ".home.arpa", ".localdomain")
LOOPBACK_NAMES = frozenset({"localhost"})
ACCEPT_RESOLVE_SECONDS = 0.5
SEND_TIMEOUT_SECONDS = 10.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")


def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_refusal(addr: Address, *, local: bool) -> str | None:
    """Why a webhook may not go to `addr`, or None when it may."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            return address_refusal(inner, local=local)
    if addr.is_loopback:
        return None if local else f"{addr} is a loopback address"
    if addr.is_multicast or addr.is_unspecified or not addr.is_global:
        # is_global is False for private, link-local (the metadata server), CGNAT, ULA, reserved.
        return f"{addr} is not a public internet address"
    return None


def _parse_ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Forms that inet_aton takes and a resolver would dial ("127.1", "0x7f000001", "2130706433").
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address (the only hosts plain http may go to, in local mode)."""
    ip = _parse_ip(host)
    if ip is None:
        return host.lower().rstrip(".") in LOOPBACK_NAMES
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _embedded_v4(ip) or ip
    return ip.is_loopback


def name_refusal(host: str, *, local: bool) -> str | None:
    """Why a host name (not an address) is refused without a lookup, or None."""
    name = host.lower().rstrip(".")
    if local and name in LOOPBACK_NAMES:
        return None
    if name in INTERNAL_NAMES or name.endswith(INTERNAL_SUFFIXES) or "." not in name:
        return f"{host} names a host inside a private network"
    return None


def refusal(host: str, port: int, *, local: bool, resolve: Resolver = system_resolve) -> str | None:
    """Why a webhook may not go to `host` (every address it resolves to is judged), or None."""
    ip = _parse_ip(host)
    if ip is not None:
        return address_refusal(ip, local=local)
    why = name_refusal(host, local=local)
    if why is not None:
        return why
    addresses = list(resolve(host, port))
    if not addresses:
        return f"{host} does not resolve"
    for a in addresses:
        why = address_refusal(ipaddress.ip_address(a.split("%", 1)[0]), local=local)
        if why is not None:
            return f"{host} resolves to {a}: {why}"
    return None


def acceptance_refusal(host: str, port: int, *, local: bool, resolve: Resolver = system_resolve,
                       budget: float = ACCEPT_RESOLVE_SECONDS) -> str | None:
    """:func:`refusal` with the lookup bounded by `budget`; a name that cannot be resolved now is
    left to the check at sending time."""
    ip = _parse_ip(host)
    if ip is not None or name_refusal(host, local=local) is not None or (local and host.lower() in LOOPBACK_NAMES):
        return refusal(host, port, local=local, resolve=resolve)
    future = _pool.submit(lambda: list(resolve(host, port)))
    try:
        addresses = future.result(timeout=budget)
    except (OSError, concurrent.futures.TimeoutError, UnicodeError):
        return None
    return refusal(host, port, local=local, resolve=lambda _h, _p: addresses)


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "status": self.status, "error": self.error}


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with `Host`, SNI and certificate checks for the URL's name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def deliver(url: str, body: Mapping[str, Any], *, local: bool, resolve: Resolver = system_resolve,
            timeout: float = SEND_TIMEOUT_SECONDS, secrets: tuple[str, ...] | None = None) -> Delivery:
    """POST `body` as JSON to `url` after checking, now, every address its host resolves to.
    Signed with `secrets` (default: WEBHOOK_SECRET; functions.webhooks.signing)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "http" and not local:
        return Delivery(False, error="refused: webhooks go over https off the local stack")
    ip = _parse_ip(host)
    try:
        addresses = [str(ip)] if ip is not None else list(resolve(host, port))
    except (OSError, UnicodeError) as exc:
        return Delivery(False, error=f"cannot resolve {host}: {exc}")
    why = refusal(host, port, local=local, resolve=lambda _h, _p: addresses)
    if why is not None:
        return Delivery(False, error=f"refused: {why}")
    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = cls(host, port, addresses[0], timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = json.dumps(dict(body), separators=(",", ":")).encode()
    try:
        signed = webhook_signing.headers(data, webhook_signing.secrets_from_env() if secrets is None else secrets)
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                         "User-Agent": "splatpipe-webhook", **signed})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return Delivery(False, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    return Delivery(200 <= status < 300, status=status, error=None if status < 300 else f"HTTP {status}")
