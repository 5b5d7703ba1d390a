"""Facts of the public HTTP API that the api function and its clients (the SDK, the results page's
script) both state: how a caller shows a request's callback token."""

from __future__ import annotations

TOKEN_HEADER = "X-Callback-Token"
"""The header that carries a request's callback token (or `?callback_token=` on GET routes)."""
