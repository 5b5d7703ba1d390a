"""Finding a caller's requests: by id, by id and callback token, by callback token, by upload
session. Redis holds the live records and the recently finished ones; retention evicts the rest
(`RECORD_RETENTION_SECONDS`, functions.dispatch.admission) and Firestore's copy answers for them
(functions.status.mirror, "the archive")."""

from __future__ import annotations

import secrets

from core.record import Record
from functions.context import Services
from functions.errors import NotFoundError, UnavailableError
from functions.intake import callback_token

MAX_LISTED = 200


def _find(svc: Services, request_id: str) -> Record | None:
    record = svc.queue.get(request_id)
    if record is None and svc.mirror is not None:
        record = svc.mirror.archived(request_id)
    return record


def lookup(svc: Services, request_id: str) -> Record:
    """The record of `request_id`; NotFoundError when there is none."""
    record = _find(svc, request_id)
    if record is None:
        raise NotFoundError("no such request")
    return record


def authorized(svc: Services, request_id: str, token: str) -> Record:
    """The record of `request_id` if `token` is its callback token (else NotFoundError: an id is not a
    secret, so a wrong token and an unknown id answer alike)."""
    record = _find(svc, request_id)
    if record is None or not callback_token.matches(token, record.callback_token_sha256):
        raise NotFoundError("no such request for this callback token")
    return record


def by_token(svc: Services, token: str) -> Record:
    """The record whose callback token `token` is; NotFoundError when there is none."""
    digest = callback_token.digest(token)
    request_id = svc.queue.id_for_token(digest)
    record = _find(svc, request_id) if request_id else None
    if record is None and svc.mirror is not None:
        record = svc.mirror.archived_by_token(digest)
    if record is None:
        raise NotFoundError("no request has this callback token")
    return record


def held(svc: Services, record: Record) -> Record:
    """`record` as Redis holds it now, put back from the archive first if retention evicted it:
    a restart or a delete changes the record in Redis. NotFoundError if it is gone altogether."""
    svc.queue.unfinish(record.request_id)  # first: retention must not take it from under the change
    fresh = svc.queue.get(record.request_id)
    if fresh is None:
        svc.queue.restore(record)
        fresh = svc.queue.get(record.request_id)
    if fresh is None:
        raise NotFoundError("no such request")
    return fresh


def session_records(svc: Services, session_id: str) -> list[Record]:
    """The session's records, newest first (the caller is authorized already)."""
    ids = svc.queue.session_requests(session_id, MAX_LISTED)
    records = [r for r in (svc.queue.get(i) for i in reversed(ids)) if r is not None]
    if svc.mirror is not None and len(records) < MAX_LISTED:
        held_ids = {r.request_id for r in records}
        try:
            archived = svc.mirror.archived_session(session_id, MAX_LISTED)
        except UnavailableError:  # Firestore down: what Redis holds (the recent ones) still answers
            archived = []
        records += [r for r in archived if r.request_id not in held_ids]
        records.sort(key=lambda r: r.created_at, reverse=True)
    return records[:MAX_LISTED]


def session_requests(svc: Services, session_id: str, token: str) -> list[Record]:
    """The session's records, newest first, if `token` is the callback token of any of them."""
    records = session_records(svc, session_id)
    digest = callback_token.digest(token)
    if not any(secrets.compare_digest(digest, r.callback_token_sha256) for r in records):
        raise NotFoundError("no session with a request for this callback token")
    return records
