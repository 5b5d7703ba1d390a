"""Per-caller rate limit: an exact sliding window (not fixed buckets) in one Lua script
(functions/lua/sliding_window.lua).

Each caller has a sorted set of its accepted calls' times (ms). A call is allowed when fewer than
`limit` calls remain in the last `window`; a refused call is not recorded, and `Retry-After` is
when the oldest call in the window leaves it — the first moment a call will be allowed again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import redis

from functions.request_queue import lua

_SCRIPT = lua("sliding_window")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_ms: int  # 0 when allowed


class SlidingWindowLimiter:
    def __init__(self, client: redis.Redis, limit: int, window_seconds: float = 60.0, prefix: str = "sp:rl:") -> None:
        self.limit = limit
        self.window_ms = int(window_seconds * 1000)
        self.prefix = prefix
        self._script = client.register_script(_SCRIPT)

    def hit(self, caller: str) -> Decision:
        """Count one call by `caller` if the window has room. A limit <= 0 disables the limit."""
        if self.limit <= 0:
            return Decision(True, 0, 0)
        # Callers are hashed: a principal's e-mail address never appears in a Redis key.
        key = self.prefix + hashlib.sha256(caller.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        allowed, remaining, retry = self._script(keys=[key], args=[self.limit, self.window_ms,
                                                                 secrets.token_hex(8)])
        return Decision(bool(allowed), int(remaining), max(0, int(retry)))
