"""A small router: (method, path pattern) -> handler, with JSON 404 and 405 (+ Allow).

A module of routes keeps a `ROUTES` list and declares each handler with `@route(method, pattern)`,
`route = collect(ROUTES)`: the pattern sits next to its handler.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from functions.edge.json_api import ApiError


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    """"/status/{request_id}" -> a regex with one named group per `{name}` (one path segment each)."""
    parts = re.split(r"\{(\w+)\}", pattern)
    out = []
    for i, part in enumerate(parts):
        out.append(f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part))
    return re.compile("".join(out))  # applied with fullmatch: no trailing "\n" slips through


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: Callable[..., Any]


Handler = TypeVar("Handler", bound=Callable[..., Any])


def collect(routes: list[Route]) -> Callable[[str, str], Callable[[Handler], Handler]]:
    """A decorator factory: `@route(method, pattern)` adds the handler to `routes`."""
    def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            routes.append(Route(method, pattern, handler))
            return handler
        return add
    return route


def match(routes: Sequence[Route], method: str, path: str) -> tuple[Callable[..., Any], dict[str, str]]:
    """The handler and path parameters for a request; ApiError 404 / 405 otherwise."""
    method = "GET" if method == "HEAD" else method
    allowed: list[str] = []
    for route in routes:
        m = _compile(route.pattern).fullmatch(path)
        if m is None:
            continue
        if route.method == method:
            return route.handler, m.groupdict()
        allowed.append(route.method)
    if allowed:
        raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                       {"Allow": ", ".join(sorted(set(allowed)))})
    raise ApiError(404, "not_found", f"no route {path}")
