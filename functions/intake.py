"""Accepting a new request, whichever door it came in by (trigger, preprocess, enqueue, upload).

Enqueue (dedup and record creation are one atomic script), then the side effects of a new
request, none of which can fail it: `request.json` in the workspace (dispatch re-writes it if
this write is lost), the Firestore mirror (the outbox catches up), and the poke to dispatch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from functions import callback_token, dedup, workspace
from functions.context import Services
from functions.dedup import DedupKey
from functions.validation import NewRequest

log = logging.getLogger("splatpipe.intake")


@dataclass(frozen=True)
class Accepted:
    request_id: str
    created: bool  # False: deduplicated, `request_id` is the earlier request
    state: str
    callback_token: str | None  # only for a new request: shown to the caller once


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
           dedup_keys: Iterable[tuple[DedupKey, int]] | None = None) -> Accepted:
    token, token_sha = callback_token.new_token()
    keys = default_dedup(svc, req) if dedup_keys is None else list(dedup_keys)
    res = svc.queue.enqueue(req, token_sha256=token_sha, dedup=keys, source=source)
    if not res.created:
        return Accepted(res.request_id, False, res.state, None)
    record = svc.queue.get(res.request_id)
    if record is not None:
        try:
            workspace.write_request_json(svc.settings, record)
        except Exception as exc:
            log.warning("request %s: request.json not written now (%s); dispatch will", res.request_id, exc)
    if svc.mirror is not None:
        svc.mirror.after_change(res.request_id)
    svc.kick()
    return Accepted(res.request_id, True, res.state, token)
