"""What the domain modules refuse with: a stable machine code and a message safe to show the caller.

They say what went wrong, never how HTTP answers it: functions.edge.json_api.http_error gives each
kind its status, once, at the edge.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "invalid_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequestError(DomainError):
    """The request's content is wrong; the message names the field."""


class NotFoundError(DomainError):
    """No such thing (also a wrong callback token: ids are not secrets, so both answer alike)."""

    code = "not_found"


class ConflictError(DomainError):
    """The request is in a state the operation does not apply to."""

    code = "wrong_state"


class TooLargeError(DomainError):
    code = "result_too_large"


class UnauthenticatedError(DomainError):
    """The caller's credentials do not check out; `challenge`: tell it to send a valid bearer token."""

    code = "invalid_token"

    def __init__(self, message: str, *, challenge: bool = True) -> None:
        super().__init__(message)
        self.challenge = challenge


class UnavailableError(DomainError):
    """Something we depend on cannot answer now; `retry_after`: seconds worth waiting, if known."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
