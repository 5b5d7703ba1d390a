"""What a function invocation works with, built once per process and per configuration."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from functions.config import Settings
from functions.dispatch.executions import Executor
from functions.dispatch.kick import DispatchKick
from functions.edge.caller import IdTokenVerifier
from functions.queue_store import connection as redis_conn
from functions.queue_store.rate_limit import SlidingWindowLimiter
from functions.queue_store.store import Replication, RequestQueue
from functions.status.mirror import StatusMirror
from functions.status.output_links import OutputLinker


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
    queue = RequestQueue(client, replication=Replication(settings.redis_replicas_to_ack,
                                                         settings.redis_ack_timeout_ms))
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
