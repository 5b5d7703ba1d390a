"""A request's log: its structured lines (core.logs), oldest first, from line N on.

Every process writes JSON lines that carry `request_id` where they concern a request: the
functions, and the stage runner in its Batch task. Where they are read back:
- on Google Cloud, Cloud Logging: `entries.list` filtered by `jsonPayload.request_id`, from the
  request's creation on, oldest first
  (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list); the functions' and
  the Batch tasks' logs alike (the job body's logsPolicy is CLOUD_LOGGING:
  functions.dispatch.batch_job). The api's service account reads them as `roles/logging.viewer`.
- on the local stack, its run folder (LOCAL_LOG_DIR): each process's `{name}.log`
  (emulator.processes.start_process) and each Batch task attempt's log under
  `workflows/batch/{job}/` (emulator.batch.runner), the same JSON lines.

Lines are ordered by their time; `line=N` skips the first N, so a reader that asks again with
the `next_line` it was given gets only what came since (a line that reaches Cloud Logging late,
with an older time, can land before N: the log is for reading, the events' metrics count).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core import logs
from core.log_events import REQUEST_ID
from core.record import Record
from functions.config import Settings
from functions.errors import UnavailableError

MAX_LINES = 1000
"""Lines in one answer at most; `next_line` says where to go on."""
LOGGING_API = "https://logging.googleapis.com/v2/entries:list"
TIMEOUT_SECONDS = 20.0
PAGE_SIZE = 1000  # entries.list's largest page
MAX_PAGES = 50  # how deep one call reads into a request's log (50,000 lines)
CLOCK_SLACK = dt.timedelta(minutes=1)  # lines a little older than the record (another machine's clock)


class LogSource(Protocol):
    def lines(self, request_id: str, since: dt.datetime, upto: int) -> Iterator[dict[str, Any]]:
        """The request's lines from `since` on, oldest first; at least the first `upto` of them."""
        ...


@dataclass(frozen=True)
class LocalLogs:
    """The local stack's process logs."""

    run_dir: Path

    def _files(self) -> list[Path]:
        return sorted([*self.run_dir.glob("*.log"), *self.run_dir.glob("workflows/batch/*/*.log")])

    def lines(self, request_id: str, since: dt.datetime, upto: int) -> Iterator[dict[str, Any]]:
        found: list[tuple[str, int, int, dict[str, Any]]] = []
        needle = f'"{REQUEST_ID}":"{request_id}"'  # core.logs writes compact JSON
        for n, path in enumerate(self._files()):
            try:
                text = path.read_text(errors="replace")
            except OSError:  # rotated or removed meanwhile
                continue
            for i, raw in enumerate(text.splitlines()):
                if needle not in raw:
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict) and line.get(REQUEST_ID) == request_id:
                    found.append((str(line.get(logs.TIME, "")), n, i, line))
        found.sort(key=lambda f: f[:3])
        return (line for _, _, _, line in found)


@dataclass(frozen=True)
class CloudLogging:
    """Cloud Logging's entries of the project, through its REST API."""

    project: str

    def _session(self) -> Any:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/logging.read"])
        return AuthorizedSession(creds)

    def lines(self, request_id: str, since: dt.datetime, upto: int) -> Iterator[dict[str, Any]]:
        stamp = since.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        body: dict[str, Any] = {
            "resourceNames": [f"projects/{self.project}"], "orderBy": "timestamp asc", "pageSize": PAGE_SIZE,
            "filter": f'jsonPayload.{REQUEST_ID}="{request_id}" AND timestamp>="{stamp}"'}
        session = self._session()
        seen = 0
        for _ in range(MAX_PAGES):
            resp = session.post(LOGGING_API, json=body, timeout=TIMEOUT_SECONDS)
            if resp.status_code >= 300:
                raise UnavailableError(f"Cloud Logging answered HTTP {resp.status_code}; retry shortly", retry_after=10)
            page = resp.json()
            for entry in page.get("entries", []):
                seen += 1
                yield {logs.TIME: entry.get("timestamp"), logs.SEVERITY: entry.get("severity", "DEFAULT"),
                       **(entry.get("jsonPayload") or {})}
            body["pageToken"] = page.get("nextPageToken")
            if not body["pageToken"] or seen >= upto:
                return


def source(settings: Settings) -> LogSource:
    if settings.on_gcp:
        return CloudLogging(settings.project)
    if settings.local_log_dir:
        return LocalLogs(Path(settings.local_log_dir))
    raise UnavailableError("this deployment has no log to read: neither Cloud Logging nor LOCAL_LOG_DIR")


def read(settings: Settings, record: Record, line: int, limit: int = MAX_LINES) -> dict[str, Any]:
    """`{request_id, state, line, next_line, more, lines}`: the record's lines `line` to
    `line + limit` (`more`: there are lines after them already)."""
    since = dt.datetime.fromtimestamp(record.created_at / 1000.0, tz=dt.UTC) - CLOCK_SLACK
    out: list[dict[str, Any]] = []
    more = False
    try:
        for i, entry in enumerate(source(settings).lines(record.request_id, since, line + limit + 1)):
            if i >= line + limit:
                more = True
                break
            if i >= line:
                out.append(entry)
    except UnavailableError:
        raise
    except Exception as exc:  # the log reader's trouble is not the caller's
        raise UnavailableError(f"the log cannot be read now ({type(exc).__name__}); retry shortly",
                               retry_after=10) from exc
    return {"request_id": record.request_id, "state": record.state, "line": line, "next_line": line + len(out),
            "more": more, "lines": out}
