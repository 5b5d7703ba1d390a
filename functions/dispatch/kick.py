"""The poke `api`, `queue` and `on_upload` give `dispatch` after an enqueue, so a request starts at once.

A POST to `DISPATCH_URL` (with a Google ID token for that audience when it is https, as the
dispatch function is IAM-only), sent from a background thread: calling the poke only marks it
due and returns at once, so no request ever waits on dispatch. Pokes coalesce: one is in flight
at a time, and however many enqueues arrive meanwhile, one more follows it (a dispatch pass
starts everything admissible, so one pass per burst is enough), and they start at least
`MIN_INTERVAL` apart: under a burst of triggers, dispatch then runs a few passes a second, each
starting and mirroring many requests, rather than one pass after another (each pass costs its
Redis and Firestore calls however little it finds to do). Each poke has a sub-second
budget; dispatch keeps running after we stop waiting, and a lost poke costs at most one Cloud
Scheduler tick (every minute), which calls dispatch anyway.

On Cloud Run a thread runs after its response only while the instance has CPU (with
request-based billing, CPU outside requests is throttled:
https://cloud.google.com/run/docs/configuring/billing-settings); a poke delayed that way is one
more reason the scheduler's tick exists.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("splatpipe.kick")

CONNECT_TIMEOUT = 0.3
READ_TIMEOUT = 0.5
MIN_INTERVAL = 0.25  # s between the starts of two pokes: a request waits at most this much longer
TOKEN_SECONDS = 45 * 60  # Google ID tokens live an hour


class DispatchKick:
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_at = 0.0
        self._due = threading.Condition()
        self._pending = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._last = float("-inf")  # when the last poke started (monotonic)
        self.sent = 0  # pokes that went out (for tests and logs)

    def _id_token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() - self._token_at > TOKEN_SECONDS:
                import google.auth.transport.requests
                import google.oauth2.id_token

                self._token = google.oauth2.id_token.fetch_id_token(
                    google.auth.transport.requests.Request(), self.url)
                self._token_at = time.monotonic()
            return self._token

    def __call__(self) -> None:
        """Mark a poke due; it goes out from the background thread. Never blocks, never raises."""
        if not self.url:
            return
        with self._due:
            self._pending = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dispatch-kick", daemon=True)
                self._thread.start()
            self._due.notify()

    def idle(self, timeout: float) -> bool:
        """Wait until no poke is due or in flight; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._due:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._due.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        while True:
            with self._due:
                while not self._pending:
                    self._due.wait()
                self._busy = True
            time.sleep(max(0.0, self._last + MIN_INTERVAL - time.monotonic()))
            with self._due:
                self._pending = False  # what arrived while we waited goes out with this poke
            self._last = time.monotonic()
            try:
                self.send()
            finally:
                with self._due:
                    self._busy = False
                    self._due.notify_all()

    def send(self) -> bool:
        """One poke now, within CONNECT_TIMEOUT + READ_TIMEOUT; True when the request went out."""
        import requests

        headers = {"Content-Type": "application/json"}
        try:
            if self.url.startswith("https://"):
                headers["Authorization"] = f"Bearer {self._id_token()}"
            requests.post(self.url, data=b"{}", headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            self.sent += 1
            return True
        except requests.ReadTimeout:
            self.sent += 1
            return True  # sent; dispatch carries on without us
        except Exception as exc:
            log.warning("could not poke dispatch at %s (%s); the scheduler's tick will", self.url, exc)
            return False
