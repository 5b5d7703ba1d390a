"""Redis connections from the settings: plain `redis://` locally, `rediss://` + AUTH on Memorystore.

Memorystore with in-transit encryption presents a certificate signed by the instance's own CA,
which is not in any system trust store: `REDIS_CA_CERT` carries that CA as PEM text (Terraform
reads it off the instance), and the TLS context trusts it alone.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from functions.config import Settings

_lock = threading.Lock()
_clients: dict[tuple[str, str], redis.Redis] = {}

# A connection dropped by a Redis restart or failover is retried on a fresh connection. Every
# script we run is safe to retry: enqueue is keyed by its request id, a repeated take only leaves
# one more request leased (and the lease brings it back).
_RETRY_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url(settings.redis_url, **kwargs)`."""
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": list(_RETRY_ERRORS),
    }
    if settings.redis_url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if settings.redis_ca_cert.strip():
            # PEM text from the environment; redis-py wants it as `ssl_ca_data`.
            kwargs["ssl_ca_data"] = settings.redis_ca_cert
        # Memorystore's certificate names an IP address, not the host we dial: the CA pins trust.
        kwargs["ssl_check_hostname"] = False
    return kwargs


def client(settings: Settings) -> redis.Redis:
    """A process-wide client (connection pool) per Redis URL and CA."""
    key = (settings.redis_url, settings.redis_ca_cert)
    with _lock:
        found = _clients.get(key)
        if found is None:
            found = redis.Redis.from_url(settings.redis_url, **connection_kwargs(settings))
            _clients[key] = found
        return found

