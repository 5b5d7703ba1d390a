"""The Cloud Storage client of the functions (anonymous against the emulator)."""

from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}

TIMEOUT_SECONDS = 30.0


def client(project: str) -> Any:
    """A process-wide `google.cloud.storage.Client`; `STORAGE_EMULATOR_HOST` switches to the emulator."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    key = (project, emulator)
    with _lock:
        found = _clients.get(key)
        if found is None:
            from google.cloud import storage

            if emulator:
                from google.auth.credentials import AnonymousCredentials

                found = storage.Client(project=project, credentials=AnonymousCredentials())
            else:
                found = storage.Client(project=project)
            _clients[key] = found
        return found


def uses_emulator() -> bool:
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


def emulator_base() -> str:
    """The storage emulator's base URL (`STORAGE_EMULATOR_HOST`, with a scheme)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    return host if host.startswith(("http://", "https://")) else "http://" + host
