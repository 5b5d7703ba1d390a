"""The Google Cloud clients of the package and its `gs://` URIs (anonymous against the emulators).

The functions and the Batch jobs (batch_jobs/storage.py, batch_jobs/progress.py) share these:
one Cloud Storage client and one Firestore client per project and emulator, per process.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_clients: dict[tuple[str, str | None, str], Any] = {}

SCHEME = "gs://"
TIMEOUT_SECONDS = 30.0
LOCAL_PROJECT = "splatpipe-local"
"""The project of the local stack's emulators (functions.config.Settings.project's default)."""


def split_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`); ValueError when it is not a gs:// URI with a bucket."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"not a gs:// URI: {uri}")
    bucket, _, key = uri[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri}")
    return bucket, key


def _emulator_project(project: str | None) -> str:
    """Against an emulator a project is required: GOOGLE_CLOUD_PROJECT, else the local stack's."""
    return project or os.environ.get("GOOGLE_CLOUD_PROJECT") or LOCAL_PROJECT


def client(project: str | None = None) -> Any:
    """A process-wide `google.cloud.storage.Client`; `STORAGE_EMULATOR_HOST` switches to the emulator.

    `project` None: on Google Cloud the environment's (the library finds it), against the
    emulator GOOGLE_CLOUD_PROJECT or the local stack's.
    """
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator:
        project = _emulator_project(project)
    key = ("storage", project, emulator)
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


def firestore_client(project: str | None = None) -> Any:
    """A `google.cloud.firestore.Client`; `FIRESTORE_EMULATOR_HOST` switches to the emulator.

    `project` None: GOOGLE_CLOUD_PROJECT, else the local stack's. Not cached: each holder (the
    status mirror, a stage's progress sink) keeps its own.
    """
    from google.cloud import firestore

    project = _emulator_project(project)
    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return firestore.Client(project=project, credentials=AnonymousCredentials())
    return firestore.Client(project=project)


def uses_emulator() -> bool:
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


def emulator_base() -> str:
    """The storage emulator's base URL (`STORAGE_EMULATOR_HOST`, with a scheme)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    return host if host.startswith(("http://", "https://")) else "http://" + host
