"""A request's results as a caller downloads them: the manifest of its outputs (signed links), one
zip of them, and the files a running stage rewrites (the live preview, the latest splat)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

from core import gcs, workspace
from core import record as jobrecord
from core.record import Record
from functions.context import Services
from functions.errors import ConflictError, TooLargeError

ZIP_MAX_BYTES = 24 * 1024 * 1024
"""Largest result served as one zip: Cloud Run answers at most 32 MiB without streaming
(https://cloud.google.com/run/quotas#cloud_run_limits); bigger results are downloaded by the manifest."""


# --- download --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    name: str  # the output's name in the status (`splat_ply`, …)
    path: str  # `{stage}/{file}` inside the workspace
    uri: str
    size: int
    content_type: str | None


def output_files(svc: Services, record: Record) -> list[OutputFile]:
    """The request's outputs that exist, with sizes (one listing of the workspace)."""
    if record.state == jobrecord.State.DELETED.value:
        raise ConflictError("request is DELETED; its outputs are gone")
    outputs = record.outputs
    if not outputs:
        raise ConflictError(f"request is {record.state} and has no outputs yet")
    ws = svc.settings.workspace_uri(record.request_id)
    ws_bucket, ws_prefix = gcs.split_uri(ws)
    found = {b.name: b for b in gcs.client(svc.settings.project).list_blobs(ws_bucket, prefix=ws_prefix + "/",
                                                                             timeout=gcs.TIMEOUT_SECONDS)}
    files = []
    for name, uri in sorted(outputs.items()):
        try:
            bucket, key = gcs.split_uri(uri)
        except ValueError:  # an output a status update named oddly ("gs:///x"): no file of ours
            continue
        blob = found.get(key) if bucket == ws_bucket else None
        if blob is None:
            continue
        files.append(OutputFile(name, key[len(ws_prefix) + 1:], uri, int(blob.size or 0), blob.content_type))
    return files


def manifest(svc: Services, record: Record) -> dict[str, Any]:
    files = output_files(svc, record)
    entries = [{"name": f.name, "path": f.path, "size": f.size, "content_type": f.content_type,
                "url": svc.links.download_url(f.uri)} for f in files]
    return {"request_id": record.request_id, "state": record.state, "files": entries,
            "total_bytes": sum(f.size for f in files), "zip_max_bytes": ZIP_MAX_BYTES}


def zip_bytes(svc: Services, record: Record) -> bytes:
    """The outputs as one zip (`{stage}/{file}` entries); TooLargeError past ZIP_MAX_BYTES."""
    files = output_files(svc, record)
    total = sum(f.size for f in files)
    if total > ZIP_MAX_BYTES:
        raise TooLargeError(f"the outputs are {total} bytes; a zip is served up to {ZIP_MAX_BYTES} "
                                  "bytes: use the manifest's URLs")
    client = gcs.client(svc.settings.project)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            bucket, key = gcs.split_uri(f.uri)
            zf.writestr(f.path, client.bucket(bucket).blob(key).download_as_bytes(timeout=gcs.TIMEOUT_SECONDS))
    return buf.getvalue()


# --- live preview ----------------------------------------------------------------------------------

MAX_LIVE_PREVIEW_BYTES = 4 * 1024 * 1024


def live_preview(svc: Services, record: Record) -> bytes:
    """The training's latest preview render (a small PNG); ConflictError when there is none."""
    return _running_file(svc, record, workspace.LIVE_PREVIEW, MAX_LIVE_PREVIEW_BYTES,
                         "no live preview yet: the splat stage writes one while it trains",
                         "the live preview is {size} bytes")


def _running_file(svc: Services, record: Record, name: str, max_bytes: int, missing: str, too_large: str) -> bytes:
    """A file a running stage rewrites in the request's workspace (not an output): ConflictError
    when it is not there or the request is DELETED, TooLargeError past `max_bytes`."""
    if record.state == jobrecord.State.DELETED.value:
        raise ConflictError("request is DELETED; its outputs are gone")
    ws_bucket, ws_prefix = gcs.split_uri(svc.settings.workspace_uri(record.request_id))
    blob = gcs.client(svc.settings.project).bucket(ws_bucket).get_blob(f"{ws_prefix}/{name}",
                                                                       timeout=gcs.TIMEOUT_SECONDS)
    if blob is None:
        raise ConflictError(missing)
    if (blob.size or 0) > max_bytes:
        raise TooLargeError(too_large.format(size=blob.size))
    return bytes(blob.download_as_bytes(timeout=gcs.TIMEOUT_SECONDS))


# --- the training's latest snapshot --------------------------------------------------------------

MAX_LATEST_SPLAT_BYTES = ZIP_MAX_BYTES
"""Largest snapshot served through the api (Cloud Run answers at most 32 MiB without streaming);
a larger one is read through the status's `outputs.splat_latest` link (signed on Google Cloud)."""


def latest_splat(svc: Services, record: Record) -> bytes:
    """The splat training's latest snapshot (`workspace.LATEST_SPLAT`, an SPZ file); ConflictError
    when there is none (not yet written, or the stage was restarted and has not written one again).
    The status's `stages.splat.latest_splat_step` names its step: the stage writes the file first
    and notes the step after, so the file served is of that step or a later one."""
    return _running_file(svc, record, workspace.LATEST_SPLAT, MAX_LATEST_SPLAT_BYTES,
                         "no splat snapshot yet: the splat stage publishes one at each checkpoint while it trains",
                         f"the snapshot is {{size}} bytes; the api serves one up to {MAX_LATEST_SPLAT_BYTES} bytes: "
                         "use the status's outputs.splat_latest")
