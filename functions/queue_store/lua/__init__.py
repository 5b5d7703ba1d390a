"""The Redis scripts, one `.lua` file each with its KEYS and ARGV documented at its top, read once
at import. Every script runs after `lib.lua` (the clock, the queue's score) and the Lua locals
its owner generates from Python (its tables: one source of truth)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def source(name: str) -> str:
    return (_HERE / f"{name}.lua").read_text()


LIB = source("lib")
WINDOW = source("window")  # the rate limit's sliding window: the limiter's and the enqueue's


def script(name: str, *generated: str) -> str:
    """functions/queue_store/lua/{name}.lua, after lib.lua and the `generated` Lua text."""
    return "\n".join([LIB, *generated, source(name)])
