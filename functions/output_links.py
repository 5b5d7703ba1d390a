"""Outputs as links: V4 signed URLs on Google Cloud, the gs:// URIs elsewhere.

A function's service account has no private key, so signing goes through the IAM
`signBlob` API with the account's own access token (the account needs
`roles/iam.serviceAccountTokenCreator` on itself). Any failure leaves the gs:// URI: a status
response never fails over a link.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from functions import gcs
from functions.config import Settings
from functions.validation import split_gs_uri

log = logging.getLogger("splatpipe.links")


class OutputLinker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.on_gcp and settings.signed_url_seconds > 0 and not gcs.uses_emulator()
        self._creds: Any = None
        self._lock = threading.Lock()

    def _credentials(self) -> Any:
        import google.auth
        from google.auth.transport.requests import Request

        with self._lock:
            if self._creds is None:
                self._creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            if not self._creds.valid:
                self._creds.refresh(Request())
            return self._creds

    def link(self, uri: str) -> str:
        if not self.enabled or not uri.startswith("gs://") or uri.endswith("/"):
            return uri
        try:
            creds = self._credentials()
            bucket, name = split_gs_uri(uri)
            blob = gcs.client(self.settings.project).bucket(bucket).blob(name)
            return str(blob.generate_signed_url(
                version="v4", method="GET", expiration=dt.timedelta(seconds=self.settings.signed_url_seconds),
                service_account_email=creds.service_account_email, access_token=creds.token))
        except Exception as exc:
            log.warning("cannot sign %s (%s); returning the gs:// URI", uri, exc)
            return uri
