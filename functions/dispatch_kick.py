"""The poke `api` and `on_upload` give `dispatch` after an enqueue, so a request starts at once.

A short POST to `DISPATCH_URL` (with a Google ID token for that audience when it is https, as the
dispatch function is IAM-only). It waits at most a couple of seconds and never fails the caller:
dispatch keeps running after we stop waiting, and a lost poke costs at most one Cloud Scheduler
tick (every minute), which calls dispatch anyway.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("splatpipe.kick")

CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
TOKEN_SECONDS = 45 * 60  # Google ID tokens live an hour


class DispatchKick:
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_at = 0.0

    def _id_token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() - self._token_at > TOKEN_SECONDS:
                import google.auth.transport.requests
                import google.oauth2.id_token

                self._token = google.oauth2.id_token.fetch_id_token(
                    google.auth.transport.requests.Request(), self.url)
                self._token_at = time.monotonic()
            return self._token

    def __call__(self) -> bool:
        """Poke dispatch; True when the request went out."""
        if not self.url:
            return False
        import requests

        headers = {"Content-Type": "application/json"}
        try:
            if self.url.startswith("https://"):
                headers["Authorization"] = f"Bearer {self._id_token()}"
            requests.post(self.url, data=b"{}", headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            return True
        except requests.ReadTimeout:
            return True  # sent; dispatch carries on without us
        except Exception as exc:
            log.warning("could not poke dispatch at %s (%s); the scheduler's tick will", self.url, exc)
            return False
