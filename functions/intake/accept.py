"""Accepting a new request, whichever door it came in by (trigger, preprocess, enqueue, upload).

Accepting is the one atomic enqueue script (dedup, the record, the priority queue, the callback
token and the mirror's outbox entry, all at once) and nothing else: the side effects of a new
request happen off the request path, each where its guarantee already lives —
- `request.json` in the workspace: dispatch writes it before it starts the request's execution
  (`request_file.ensure_request_json`), so it exists before any stage runs;
- the Firestore document: the record's outbox entry, drained by dispatch's catch-up pass;
- the poke to dispatch: marked due here and sent from a background thread (functions.dispatch.kick).
So an outage of Cloud Storage, Firestore or dispatch adds no latency to an accept, and a crash
right after the script loses nothing: dispatch (every minute at the latest) does the rest.

Acknowledged means held by two machines. Memorystore replicates asynchronously and "acknowledged
writes might be lost during a failover" (https://cloud.google.com/memorystore/docs/redis/high-availability),
so with `REDIS_REPLICAS_TO_ACK` set the enqueue waits for the replica (WAIT, on the same
connection: functions.queue_store.store). When no replica confirms in time (one is being rebuilt
after a failover), the record is written to Firestore at once instead, and dispatch puts back any
live record Firestore holds and Redis lost (functions.dispatch.admission). When neither confirms,
the new record is withdrawn and the caller gets a 503: its retry is a new accept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core import logs
from core.log_events import Event
from functions.context import Services
from functions.errors import UnavailableError
from functions.intake import callback_token, dedup
from functions.intake.dedup import DedupKey
from functions.intake.validation import NewRequest
from functions.queue_store.rate_limit import Decision, RateLimitedError
from functions.queue_store.store import EnqueueResult


@dataclass(frozen=True)
class Accepted:
    request_id: str
    created: bool  # False: deduplicated, `request_id` is the earlier request
    state: str
    callback_token: str | None  # only for a new request: shown to the caller once
    decision: Decision | None = None  # the caller's rate limit, when the accept counted the call


def default_dedup(svc: Services, req: NewRequest) -> list[tuple[DedupKey, int]]:
    """The idempotency key (if any) and the fingerprint, with their lifetimes."""
    keys: list[tuple[DedupKey, int]] = []
    if req.idempotency_key:
        # An idempotency key answers with the same request for as long as the dedup window, and at
        # least a day (clients retry across hours).
        keys.append((dedup.idempotency(req.session_id, req.idempotency_key),
                     max(svc.settings.dedup_window_seconds, 24 * 3600)))
    if svc.settings.dedup_window_seconds > 0:
        keys.append((dedup.fingerprint(req.session_id, req.input, req.options, req.stages),
                     svc.settings.dedup_window_seconds))
    return keys


def accept(svc: Services, req: NewRequest, *, source: str,
           dedup_keys: Iterable[tuple[DedupKey, int]] | None = None, caller: str | None = None) -> Accepted:
    """Enqueue `req`. `caller`: count the call against its rate limit in the same script; over
    the limit, RateLimitedError and nothing is enqueued."""
    token, token_sha = callback_token.new_token()
    keys = default_dedup(svc, req) if dedup_keys is None else list(dedup_keys)
    counted = svc.limiter.call(caller) if caller is not None else None
    res = svc.queue.enqueue(req, token_sha256=token_sha, dedup=keys, source=source, counted=counted)
    if res.decision is not None and not res.decision.allowed:
        raise RateLimitedError(res.decision)
    if not res.replicated and not _kept_in_firestore(svc, res.request_id):
        _refuse(svc, res, token_sha, req.session_id, [k.key for k, _ in keys])
    if not res.created:
        return Accepted(res.request_id, False, res.state, None, res.decision)
    logs.emit(Event.REQUEST_ACCEPTED, request_id=res.request_id, source=source)
    svc.kick()
    return Accepted(res.request_id, True, res.state, token, res.decision)


def _refuse(svc: Services, res: EnqueueResult, token_sha: str, session_id: str, dedup_keys: list[str]) -> None:
    """Neither copy confirmed: a new request is withdrawn, so the caller's retry creates it again
    and gets its callback token (a duplicate's earlier request is left as it is), then 503. Unless
    dispatch took it meanwhile (a take waits for the replica too): then it is under way."""
    if not res.created or svc.queue.withdraw(res.request_id, token_sha, session_id, dedup_keys):
        raise UnavailableError("the request could not be stored durably; retry it", retry_after=1)


def _kept_in_firestore(svc: Services, request_id: str) -> bool:
    """The second copy of an accepted request when no replica confirmed it: Firestore's, now
    (the record as Redis holds it: none, no copy)."""
    if svc.mirror is None:
        return False
    try:
        return svc.mirror.sync(request_id, require=True)
    except Exception:  # Firestore unreachable: no copy
        return False
