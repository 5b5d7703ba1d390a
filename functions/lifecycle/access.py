"""Finding a caller's requests: by id, by id and callback token, by upload session."""

from __future__ import annotations

import secrets

from core.record import Record
from functions.context import Services
from functions.errors import NotFoundError
from functions.intake import callback_token

MAX_LISTED = 200


def lookup(svc: Services, request_id: str) -> Record:
    """The record of `request_id`; NotFoundError when there is none."""
    record = svc.queue.get(request_id)
    if record is None:
        raise NotFoundError("no such request")
    return record


def authorized(svc: Services, request_id: str, token: str) -> Record:
    """The record of `request_id` if `token` is its callback token (else NotFoundError: an id is not a
    secret, so a wrong token and an unknown id answer alike)."""
    record = svc.queue.get(request_id)
    if record is None or not callback_token.matches(token, record.callback_token_sha256):
        raise NotFoundError("no such request for this callback token")
    return record


def session_records(svc: Services, session_id: str) -> list[Record]:
    """The session's records, newest first (the caller is authorized already)."""
    ids = svc.queue.session_requests(session_id, MAX_LISTED)
    return [r for r in (svc.queue.get(i) for i in reversed(ids)) if r is not None]


def session_requests(svc: Services, session_id: str, token: str) -> list[Record]:
    """The session's records, newest first, if `token` is the callback token of any of them."""
    records = session_records(svc, session_id)
    digest = callback_token.digest(token)
    if not any(secrets.compare_digest(digest, r.callback_token_sha256) for r in records):
        raise NotFoundError("no session with a request for this callback token")
    return records
