"""What a caller does with a request after making it: cancel, restart, delete, list, download,
and the upload sessions that bring local files in without bucket rights. HTTP lives in
functions.task_api; everything here raises functions.errors kinds.

- cancel: QUEUED or PROCESSING -> CANCELLED; the workflow execution is cancelled and the current
  stage's Batch job deleted (functions.batch_control).
- restart: a finished request (COMPLETED, FAILED, CANCELLED) runs again in the same workspace, the
  same id and callback token, optionally with changed options; a stage whose `_SUCCESS.json`
  still matches is skipped, `from_stage` removes that stage's and the later stages' markers so
  they run again.
- delete: the workspace (every output with it) is removed; the record stays as a DELETED
  tombstone so the id keeps answering.
"""

from __future__ import annotations

import contextlib
import io
import logging
import secrets
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from functions import batch_control, callback_token, gcs, jobrecord, stages, status_view, workspace
from functions.context import Services
from functions.errors import ConflictError, InvalidRequestError, NotFoundError, TooLargeError
from functions.jobrecord import Record
from functions.options import DEFAULT_PRESET, OPTION_SPECS, PRESETS, OptionsError, normalize_options
from functions.request_queue import IllegalTransitionError, RecordNotFoundError
from functions.video_upload import API_SEGMENT

log = logging.getLogger("splatpipe.tasks")

ACTIVE_STATES = frozenset({jobrecord.State.QUEUED.value, jobrecord.State.PROCESSING.value})
MAX_UPLOAD_FILES = 2000
MAX_UPLOAD_NAME = 200
UPLOAD_URL_SECONDS = 6 * 3600
ZIP_MAX_BYTES = 24 * 1024 * 1024
"""Largest result served as one zip: Cloud Run answers at most 32 MiB without streaming
(https://cloud.google.com/run/quotas#cloud_run_limits); bigger results are downloaded by the manifest."""
MAX_LISTED = 200
UPLOAD_SEGMENT = "uploads"


# --- status and authorization --------------------------------------------------------------------


def lookup(svc: Services, request_id: str) -> Record:
    """The record of `request_id`; NotFoundError when there is none."""
    record = svc.queue.get(request_id)
    if record is None:
        raise NotFoundError("no such request")
    return record


def status(svc: Services, record: Record, *, overlay: bool = True, internal: bool = False) -> dict[str, Any]:
    """The record's status document; `overlay`: with what its running stages wrote to the mirror."""
    fields = svc.mirror.stage_fields(record.request_id) if overlay and svc.mirror is not None else None
    return status_view.render(record, fields, link=svc.links.link, internal=internal,
                              workspace=svc.settings.workspace_uri(record.request_id))


def authorized(svc: Services, request_id: str, token: str) -> Record:
    """The record of `request_id` if `token` is its callback token (else NotFoundError: an id is not a
    secret, so a wrong token and an unknown id answer alike)."""
    record = svc.queue.get(request_id)
    if record is None or not callback_token.matches(token, record.callback_token_sha256):
        raise NotFoundError("no such request for this callback token")
    return record


def session_records(svc: Services, session_id: str) -> list[Record]:
    """The session's records, newest first (the caller is authorized already)."""
    ids = svc.queue.session_requests(session_id, MAX_LISTED)
    return [r for r in (svc.queue.get(i) for i in reversed(ids)) if r is not None]


def session_requests(svc: Services, session_id: str, token: str) -> list[Record]:
    """The session's records, newest first, if `token` is the callback token of any of them."""
    records = session_records(svc, session_id)
    digest = callback_token.digest(token)
    if not any(secrets.compare_digest(digest, r.callback_token_sha256) for r in records):
        raise NotFoundError("no session with a request for this callback token")
    return records


@contextlib.contextmanager
def _refused_by_queue() -> Iterator[None]:
    """The queue's refusals of a transition, as the caller sees them."""
    try:
        yield
    except IllegalTransitionError as exc:
        raise ConflictError(str(exc)) from None
    except RecordNotFoundError:
        raise NotFoundError("no such request") from None


def _changed(svc: Services, request_id: str) -> None:
    if svc.mirror is not None:
        svc.mirror.after_change(request_id)


# --- cancel ----------------------------------------------------------------------------------------


def running_batch_jobs(record: Record) -> list[str]:
    return [st["batch_job"] for st in record.stages.values()
            if st.get("state") == jobrecord.StageState.RUNNING.value and st.get("batch_job")]


def cancel(svc: Services, record: Record) -> dict[str, Any]:
    """QUEUED/PROCESSING -> CANCELLED, then stop its execution and running Batch job."""
    rid = record.request_id
    if record.state not in ACTIVE_STATES:
        raise ConflictError(f"request is {record.state}; only a QUEUED or PROCESSING request can be cancelled")
    with _refused_by_queue():  # it finished meanwhile
        updated = svc.queue.update(rid, {"state": jobrecord.State.CANCELLED.value}, svc.settings.lease_seconds)
    _changed(svc, rid)
    # The record is CANCELLED first: the workflow's next status update is refused and it stops,
    # whatever happens to the calls below.
    if updated.execution:
        try:
            svc.executor().cancel(updated.execution)
        except Exception as exc:
            log.warning("request %s: cannot cancel execution %s: %s", rid, updated.execution, exc)
    for job in running_batch_jobs(updated):
        batch_control.delete_job(svc.settings, job)
    return updated


# --- restart ---------------------------------------------------------------------------------------


def restart(svc: Services, record: Record, from_stage: str | None = None,
            options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run a finished request again in its workspace (see the module docstring)."""
    rid = record.request_id
    if record.state not in {s.value for s in jobrecord.RESTARTABLE_STATES}:
        hint = "its workspace is gone" if record.state == jobrecord.State.DELETED.value \
            else "cancel it or wait for it to finish"
        raise ConflictError(f"request is {record.state}; {hint}")
    requested = list(record.stages_requested)
    if from_stage is not None and from_stage not in requested:
        raise InvalidRequestError(f"from_stage must be one of the request's stages: {', '.join(requested)}",
                                  "invalid_stage")
    merged = {**record.options, **dict(options or {})}
    try:
        new_options = normalize_options(merged)
    except OptionsError as exc:
        raise InvalidRequestError(str(exc), "invalid_options") from None
    if from_stage is not None:
        ws_bucket, ws_prefix = gcs.split_uri(svc.settings.workspace_uri(rid))
        bucket = gcs.client(svc.settings.project).bucket(ws_bucket)
        for s in requested[requested.index(from_stage):]:
            blob = bucket.blob(f"{ws_prefix}/{s}/{workspace.SUCCESS_FILE}")
            try:
                blob.delete(timeout=gcs.TIMEOUT_SECONDS)
            except Exception as exc:  # absent (never ran, or failed): nothing to force
                if getattr(exc, "code", None) != 404:
                    raise
    # request.json and the mirror first: the stages read their options from request.json once
    # dispatch starts the run, and its progress must not start from the last run's.
    workspace.write_request_json(svc.settings, replace(record, options=new_options))
    if svc.mirror is not None:
        svc.mirror.clear_stage_fields(rid)
    with _refused_by_queue():
        svc.queue.restart(rid, record.version, new_options)
    _changed(svc, rid)
    # Read before the poke: the answer is the state the restart made (QUEUED), not whatever the
    # dispatch the poke starts has made of it meanwhile.
    fresh = svc.queue.get(rid)
    assert fresh is not None  # records are never removed
    svc.kick()
    return fresh


# --- delete ----------------------------------------------------------------------------------------


def delete(svc: Services, record: Record) -> dict[str, Any]:
    """Cancel if still active, make the record a DELETED tombstone, remove the workspace."""
    rid = record.request_id
    if record.state in ACTIVE_STATES:
        with contextlib.suppress(ConflictError):  # finished meanwhile: delete it as it is
            cancel(svc, record)
    with _refused_by_queue():  # restarted meanwhile
        svc.queue.tombstone(rid)
    _changed(svc, rid)
    ws_bucket, ws_prefix = gcs.split_uri(svc.settings.workspace_uri(rid))
    client = gcs.client(svc.settings.project)
    removed = 0
    for blob in client.list_blobs(ws_bucket, prefix=ws_prefix + "/", timeout=gcs.TIMEOUT_SECONDS):
        try:
            blob.delete(timeout=gcs.TIMEOUT_SECONDS)
            removed += 1
        except Exception as exc:
            if getattr(exc, "code", None) != 404:
                raise
    log.info("request %s: deleted (%d objects removed)", rid, removed)
    fresh = svc.queue.get(rid)
    assert fresh is not None
    return fresh


# --- options ---------------------------------------------------------------------------------------


def _kind_name(kind: type) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]


def options_catalog() -> dict[str, Any]:
    """Every option: type, default, allowed values, help and its value in each preset (the stage
    registry's preset tables; None when no stage parameter follows the option)."""
    entries: list[dict[str, Any]] = []
    for name, spec in OPTION_SPECS.items():
        per_preset: dict[str, Any] | None = None
        for st in stages.REGISTRY.values():
            param = st.options.get(name)
            if param is not None:
                per_preset = {p: st.presets[p][param] for p in PRESETS}
                break
        entries.append({
            "name": name,
            "type": _kind_name(spec.kind),
            "default": DEFAULT_PRESET if name == "preset" else
            (per_preset[DEFAULT_PRESET] if per_preset is not None else None),
            "preset_values": per_preset,
            "choices": list(spec.choices) if spec.choices else None,
            "minimum": spec.minimum,
            "maximum": spec.maximum,
            "help": spec.description,
        })
    return {"presets": list(PRESETS), "default_preset": DEFAULT_PRESET, "options": entries}


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


# --- uploads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadFile:
    name: str  # relative path, `/`-separated, as it will appear under the upload prefix
    content_type: str


def upload_files(raw: Any) -> list[UploadFile]:
    """`files`: [{name, content_type?}] -> checked entries (names safe as object name parts)."""
    from functions.validation import _BAD_OBJECT_CHARS

    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("files must be a non-empty list of {name, content_type?}", "invalid_files")
    if len(raw) > MAX_UPLOAD_FILES:
        raise InvalidRequestError(f"at most {MAX_UPLOAD_FILES} files per upload", "invalid_files")
    out: list[UploadFile] = []
    seen: set[str] = set()
    for i, f in enumerate(raw):
        if not isinstance(f, dict) or set(f) - {"name", "content_type"} or not isinstance(f.get("name"), str):
            raise InvalidRequestError(f"files[{i}] must be an object {{name, content_type?}}", "invalid_files")
        name = f["name"]
        ct = f.get("content_type", "application/octet-stream")
        parts = name.split("/")
        if (not 0 < len(name) <= MAX_UPLOAD_NAME or _BAD_OBJECT_CHARS.search(name)
                or any(p in ("", ".", "..") or p.startswith("_") for p in parts) or not name.isprintable()):
            raise InvalidRequestError(f"files[{i}].name must be a relative path of at most {MAX_UPLOAD_NAME} "
                                      "printable characters, no empty, '.', '..' or '_'-prefixed parts",
                                        "invalid_files")
        if not isinstance(ct, str) or not 0 < len(ct) <= 100 or "/" not in ct or not ct.isprintable():
            raise InvalidRequestError(f"files[{i}].content_type must be a media type", "invalid_files")
        if name in seen:
            raise InvalidRequestError(f"files[{i}].name repeats {name!r}", "invalid_files")
        seen.add(name)
        out.append(UploadFile(name, ct))
    return out


def start_upload(svc: Services, session_id: str, files: Sequence[UploadFile]) -> dict[str, Any]:
    """A fresh upload prefix of the session and a resumable upload per file. The `input` to
    trigger with afterwards is the prefix (photos) or the one file (a single video)."""
    from functions.upload_events import VIDEO_EXTENSIONS

    upload_id = secrets.token_hex(8)
    # Under `{session}/_api/`, which on_upload ignores: the caller's trigger makes the one request.
    prefix = f"{session_id}/{API_SEGMENT}/{UPLOAD_SEGMENT}/{upload_id}/"
    bucket = svc.settings.uploads_bucket
    entries = []
    for f in files:
        start = svc.links.resumable_upload(f"gs://{bucket}/{prefix}{f.name}", f.content_type, UPLOAD_URL_SECONDS)
        entries.append({"name": f.name, "object": f"gs://{bucket}/{prefix}{f.name}", "method": start.method,
                        "url": start.url, "headers": start.headers, "body": start.body})
    single_video = len(files) == 1 and (files[0].content_type.startswith("video/")
                                        or "." + files[0].name.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS)
    return {"session_id": session_id, "upload_id": upload_id,
            "input": entries[0]["object"] if single_video else f"gs://{bucket}/{prefix}",
            "files": entries, "expires_in_seconds": UPLOAD_URL_SECONDS}


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
