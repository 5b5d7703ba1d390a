"""Stopping a running Cloud Batch job (a cancelled request's current stage).

Cancelling a Workflows execution does not stop the Batch job its connector is waiting on, so a
cancel deletes the job too: `DELETE https://batch.googleapis.com/v1/{name}` stops its tasks and
removes it (https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs/delete).
The local Batch runner serves the same path at `BATCH_EMULATOR_HOST` and kills the task's
process group.
"""

from __future__ import annotations

import logging
from typing import Any

from functions.config import Settings

log = logging.getLogger("splatpipe.batch")

BATCH_API = "https://batch.googleapis.com"
TIMEOUT_SECONDS = 30.0


def _session(settings: Settings) -> tuple[Any, str]:
    import requests

    if settings.batch_emulator_host:
        host = settings.batch_emulator_host
        return requests.Session(), host if host.startswith(("http://", "https://")) else "http://" + host
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return AuthorizedSession(creds), BATCH_API


def delete_job(settings: Settings, name: str) -> bool:
    """Delete the job `projects/…/locations/…/jobs/…`; True when it was there. Never raises: a job
    that cannot be stopped now ends at its own time limit, and the request is cancelled anyway."""
    try:
        session, base = _session(settings)
        resp = session.delete(f"{base}/v1/{name}", timeout=TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("cannot delete Batch job %s: %s", name, exc)
        return False
    if resp.status_code == 404:
        return False
    if resp.status_code >= 300:
        log.warning("deleting Batch job %s: HTTP %s %s", name, resp.status_code, resp.text[:300])
        return False
    return True
