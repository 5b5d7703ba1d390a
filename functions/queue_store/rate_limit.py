"""Per-caller rate limit: an exact sliding window (not fixed buckets) in Lua (functions/queue_store/lua/
window.lua): alone (`hit`, sliding_window.lua), or inside the enqueue script (`call`), so that an
accepted trigger costs one round trip.

Each caller has a sorted set of its accepted calls' times (ms). A call is allowed when fewer than
`limit` calls remain in the last `window`; a refused call is not recorded, and `Retry-After` is
when the oldest call in the window leaves it — the first moment a call will be allowed again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import redis

from functions.queue_store import lua

_SCRIPT = lua.script("sliding_window", lua.WINDOW)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_ms: int  # 0 when allowed


class RateLimitedError(Exception):
    """A call over its caller's limit (the edge answers 429 with Retry-After)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"rate limited; retry in {decision.retry_after_ms} ms")
        self.decision = decision


@dataclass(frozen=True)
class WindowCall:
    """One call to count in a caller's window, by a script that does more (the enqueue)."""
    key: str
    limit: int
    window_ms: int
    member: str


class SlidingWindowLimiter:
    def __init__(self, client: redis.Redis, limit: int, window_seconds: float = 60.0, prefix: str = "sp:rl:") -> None:
        self.limit = limit
        self.window_ms = int(window_seconds * 1000)
        self.prefix = prefix
        self._script = client.register_script(_SCRIPT)

    def call(self, caller: str) -> WindowCall | None:
        """`caller`'s next call, for a script to count; None when the limit is off (<= 0)."""
        if self.limit <= 0:
            return None
        # Callers are hashed: a principal's e-mail address never appears in a Redis key.
        key = self.prefix + hashlib.sha256(caller.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return WindowCall(key, self.limit, self.window_ms, secrets.token_hex(8))

    def hit(self, caller: str) -> Decision:
        """Count one call by `caller` if the window has room. A limit <= 0 disables the limit."""
        c = self.call(caller)
        if c is None:
            return Decision(True, 0, 0)
        allowed, remaining, retry = self._script(keys=[c.key], args=[c.limit, c.window_ms, c.member])
        return Decision(bool(allowed), int(remaining), max(0, int(retry)))
