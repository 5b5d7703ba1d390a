"""Google Cloud's bad weather, made on purpose in the local engine (local only, for fault tests).

A fault lasts `seconds` and hits the calls it matches: `target: "http"` the workflow's `http.*`
calls whose URL starts with `url_prefix` and, if `methods` names HTTP methods, with one of those
(the queue function answering 503 during a Memorystore failover, or 429 at its instance cap);
`target: "batch"` the Batch connector's methods in `methods` (a Batch API 503). A matched call answers `code` as the service would (an HttpError with that
code), or with `hang: true` hangs for the call's own timeout (capped by the fault's end) and fails
as a TimeoutError. Set through the engine's REST front (`POST /emulator/weather`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from emulator.workflows.errors import tagged

TARGETS = ("http", "batch")
BATCH_METHODS = ("create", "get", "delete", "list")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class Fault:
    target: str
    until: float  # time.monotonic()
    code: int = 503
    url_prefix: str = ""
    methods: tuple[str, ...] = ()
    hang: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "seconds_left": round(max(0.0, self.until - time.monotonic()), 3),
                "code": self.code, "url_prefix": self.url_prefix, "methods": list(self.methods), "hang": self.hang}


def parse_fault(spec: Mapping[str, Any], now: Callable[[], float] = time.monotonic) -> Fault:
    """A fault from its JSON; ValueError naming the field that is wrong."""
    target = spec.get("target")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}")
    seconds = spec.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be a number in (0, {MAX_SECONDS:g}]")
    code = spec.get("code", 503)
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        raise ValueError("code must be an HTTP error status (400-599)")
    prefix = spec.get("url_prefix", "")
    methods = spec.get("methods", [])
    if target == "http" and (not isinstance(prefix, str) or not prefix.startswith(("http://", "https://"))):
        raise ValueError("an http fault needs url_prefix, an http(s) URL prefix")
    if target == "batch" and (not isinstance(methods, list) or not methods
                              or not all(m in BATCH_METHODS for m in methods)):
        raise ValueError(f"a batch fault needs methods, a list of {', '.join(BATCH_METHODS)}")
    if target == "http" and (not isinstance(methods, list) or not all(m in HTTP_METHODS for m in methods)):
        raise ValueError(f"an http fault's methods are a list of {', '.join(HTTP_METHODS)} (none: all)")
    return Fault(target=target, until=now() + float(seconds), code=code, url_prefix=prefix if target == "http" else "",
                 methods=tuple(methods), hang=bool(spec.get("hang", False)))


class Weather:
    """The faults in force; thread-safe (executions run on their own threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.hits = 0  # calls a fault answered, for the tests to see it happened

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults if f.until > now]
            return list(self._faults)

    def _match(self, target: str, key: str, method: str) -> Fault | None:
        for f in self.active():
            if f.target != target:
                continue
            if target == "batch" and method in f.methods:
                return f
            if target == "http" and key.startswith(f.url_prefix) and (not f.methods or method in f.methods):
                return f
        return None

    def strike(self, target: str, key: str, method: str, what: str, timeout: float) -> None:
        """Raise as the service would if a fault matches: `key` a URL and `method` its HTTP method,
        or `method` a Batch connector method."""
        fault = self._match(target, key, method)
        if fault is None:
            return
        with self._lock:
            self.hits += 1
        if fault.hang:
            time.sleep(max(0.0, min(timeout, fault.until - time.monotonic())))
            raise tagged("TimeoutError", f"{what}: no response within {timeout}s (injected)")
        message = f"HTTP server responded with error code {fault.code} (injected)"
        body = {"error": {"code": fault.code, "message": message, "status": "UNAVAILABLE"}}
        raise tagged("HttpError", message, code=fault.code, body=body, headers={})
