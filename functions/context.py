"""What a function invocation works with, built once per process and per configuration."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from functions import redis_conn
from functions.caller import IdTokenVerifier
from functions.config import Settings
from functions.dispatch_kick import DispatchKick
from functions.executor import Executor
from functions.output_links import OutputLinker
from functions.rate_limit import SlidingWindowLimiter
from functions.request_queue import RequestQueue
from functions.status_mirror import StatusMirror


@dataclass
class Services:
    settings: Settings
    queue: RequestQueue
    limiter: SlidingWindowLimiter
    mirror: StatusMirror | None
    links: OutputLinker
    verifier: IdTokenVerifier | None
    kick: DispatchKick
    _executor: Executor = field(init=False)

    def __post_init__(self) -> None:
        self._executor = Executor(self.settings)

    def executor(self) -> Executor:
        """The Workflows executor; it makes its client on first use (only dispatch and cancel need one)."""
        return self._executor


def build(settings: Settings) -> Services:
    client = redis_conn.client(settings)
    queue = RequestQueue(client)
    return Services(
        settings=settings,
        queue=queue,
        limiter=SlidingWindowLimiter(client, settings.rate_limit_per_minute, 60.0),
        mirror=StatusMirror(queue, settings.project) if settings.firestore_mirror else None,
        links=OutputLinker(settings),
        verifier=IdTokenVerifier() if settings.auth_audience else None,
        kick=DispatchKick(settings.dispatch_url),
    )


@functools.lru_cache(maxsize=16)
def services(settings: Settings) -> Services:
    """The process-wide services of a configuration (settings are re-read on every call)."""
    return build(settings)
