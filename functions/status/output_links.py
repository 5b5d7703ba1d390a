"""Outputs as links: V4 signed URLs on Google Cloud, the gs:// URIs elsewhere.

A function's service account has no private key, so signing goes through the IAM
`signBlob` API with the account's own access token (the account needs
`roles/iam.serviceAccountTokenCreator` on itself). Any failure leaves the gs:// URI: a status
response never fails over a link.

The task API also hands out URLs a client fetches or uploads to without bucket rights
(:meth:`OutputLinker.download_url`, :meth:`OutputLinker.resumable_upload`): signed URLs on Google
Cloud; against the storage emulator (which checks no credentials) its own JSON API URLs, used
the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from core import gcs
from functions.config import Settings
from functions.errors import UnavailableError

log = logging.getLogger("splatpipe.links")


class SigningUnavailableError(UnavailableError):
    """No URL can be made here (not on Google Cloud, no storage emulator, or signing failed)."""


@dataclass(frozen=True)
class UploadStart:
    """How a client opens a resumable upload: `method` `url` with `headers` and `body`; the
    answer's `Location` header is the session URL the bytes are PUT to (`Content-Range` chunks)."""

    url: str
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


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
            return self._sign(uri, "GET", self.settings.signed_url_seconds)
        except SigningUnavailableError as exc:
            log.warning("cannot sign %s (%s); returning the gs:// URI", uri, exc.__cause__)
            return uri

    def _sign(self, uri: str, method: str, seconds: int, headers: dict[str, str] | None = None) -> str:
        try:
            creds = self._credentials()
            bucket, name = gcs.split_uri(uri)
            blob = gcs.client(self.settings.project).bucket(bucket).blob(name)
            return str(blob.generate_signed_url(
                version="v4", method=method, expiration=dt.timedelta(seconds=seconds), headers=headers,
                service_account_email=creds.service_account_email, access_token=creds.token))
        except Exception as exc:
            raise SigningUnavailableError(f"cannot sign a URL for {uri}: {exc}") from exc

    def download_url(self, uri: str, seconds: int | None = None) -> str:
        """A URL that GETs the object with no credentials (valid `seconds`, the setting by default)."""
        if gcs.uses_emulator():
            bucket, name = gcs.split_uri(uri)
            return (f"{gcs.emulator_base()}/download/storage/v1/b/{bucket}/o/"
                    f"{urllib.parse.quote(name, safe='')}?alt=media")
        if not self.settings.on_gcp:
            raise SigningUnavailableError("download URLs need Google Cloud or the storage emulator")
        return self._sign(uri, "GET", seconds or self.settings.signed_url_seconds or 3600)

    def resumable_upload(self, uri: str, content_type: str, seconds: int) -> UploadStart:
        """How a client uploads `uri` (at most `seconds` from now to start) in resumable chunks."""
        bucket, name = gcs.split_uri(uri)
        if gcs.uses_emulator():
            # The emulator speaks the JSON API's resumable protocol, not the XML API's signed one:
            # https://cloud.google.com/storage/docs/performing-resumable-uploads#initiate-session
            query = urllib.parse.urlencode({"uploadType": "resumable", "name": name})
            return UploadStart(f"{gcs.emulator_base()}/upload/storage/v1/b/{bucket}/o?{query}",
                               headers={"Content-Type": "application/json", "X-Upload-Content-Type": content_type},
                               body=json.dumps({"contentType": content_type}))
        if not self.settings.on_gcp:
            raise SigningUnavailableError("upload URLs need Google Cloud or the storage emulator")
        # A V4 signed POST with `x-goog-resumable: start` opens a resumable session; the answer's
        # Location is the session URI (no further signing needed):
        # https://cloud.google.com/storage/docs/access-control/signed-urls#signing-resumable
        headers = {"x-goog-resumable": "start", "Content-Type": content_type}
        return UploadStart(self._sign(uri, "POST", seconds, headers), headers=headers)
