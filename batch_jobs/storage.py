"""Storage that takes `gs://bucket/key` URIs and local paths alike.

Cloud Storage goes through google-cloud-storage (it honours `STORAGE_EMULATOR_HOST`, so the
same code runs against fake-gcs-server). Transfers stream between files and the service (large
uploads go as resumable uploads in chunks, downloads are written as they arrive and checked
against the stored checksum), every call retries transient failures (429, 5xx, dropped
connections) with exponential backoff up to a deadline, and many files move in parallel.

The Cloud Storage client and the parsing of `gs://` URIs are core.gcs's, shared with the
functions. A missing object raises `FileNotFoundError` for `gs://` URIs as for local paths.
Files written here (downloads, local writes) appear atomically: a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from core import gcs

DEFAULT_PARALLELISM = 8
RETRY_DEADLINE_S = 300.0  # a transfer that keeps failing this long is a real failure
CHUNK_BYTES = 16 * 1024 * 1024  # resumable-upload chunk: bounded memory for any file size
RESUMABLE_THRESHOLD = 8 * 1024 * 1024  # smaller files go in one request

# Progress of a tree transfer: (files done, files in all).
TransferProgress = Callable[[int, int], None]


def is_gcs(uri: str) -> bool:
    return uri.startswith(gcs.SCHEME)


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with `/` (never `os.sep` semantics for gs://)."""
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _retry() -> Any:
    """google-cloud-storage's policy for transient errors, bounded by RETRY_DEADLINE_S.

    Our writes are idempotent (a stage rewrites the same object with the same content), so
    uploads retry as freely as reads.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S)


def _blob(uri: str) -> Any:
    bucket, key = gcs.split_uri(uri)
    if not key:
        raise ValueError(f"gs:// URI names a bucket, not an object: {uri}")
    return gcs.client().bucket(bucket).blob(key)


def _not_found(exc: Exception, uri: str) -> Exception:
    """google.api_core NotFound -> FileNotFoundError (what callers of local paths expect)."""
    if type(exc).__name__ == "NotFound":
        err = FileNotFoundError(f"{uri} does not exist")
        err.__cause__ = exc
        return err
    return exc


def content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def exists(uri: str) -> bool:
    """Whether the object `uri` exists (a gs:// prefix is not an object: see `list_files`);
    for local paths, whether the file or folder exists."""
    if is_gcs(uri):
        if not gcs.split_uri(uri)[1]:
            return False
        return bool(_blob(uri).exists(retry=_retry()))
    return Path(uri).exists()


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        try:
            return _blob(uri).download_as_bytes(retry=_retry())
        except Exception as exc:
            raise _not_found(exc, uri) from exc
    return Path(uri).read_bytes()


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    if is_gcs(uri):
        _blob(uri).upload_from_string(data, content_type=content_type or "application/octet-stream",
                                      retry=_retry())
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic on one filesystem: readers never see half a file


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    """`obj` as indented JSON with sorted keys; numpy scalars are written as numbers."""
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=float).encode(), "application/json")


def list_files(prefix: str) -> list[str]:
    """Names (relative to `prefix`, `/`-separated) of every file under the folder `prefix`."""
    if is_gcs(prefix):
        bucket, key = gcs.split_uri(prefix)
        key = key.rstrip("/") + "/" if key else ""
        names = []
        for blob in gcs.client().list_blobs(bucket, prefix=key, retry=_retry()):
            rel = blob.name[len(key):]
            if rel and not rel.endswith("/"):
                names.append(rel)
        return sorted(names)
    root = Path(prefix)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def download(uri: str, dest: Path) -> Path:
    """Stream `uri` into the local file `dest` (atomically: a temporary name, then a rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}-{threading.get_ident()}")
    try:
        if is_gcs(uri):
            try:
                _blob(uri).download_to_filename(str(tmp), retry=_retry())
            except Exception as exc:
                raise _not_found(exc, uri) from exc
        else:
            shutil.copyfile(uri, tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def upload(src: Path, uri: str) -> None:
    """Stream the local file `src` to `uri` (resumable, in chunks, when it is large)."""
    src = Path(src)
    if is_gcs(uri):
        blob = _blob(uri)
        if src.stat().st_size > RESUMABLE_THRESHOLD:
            blob.chunk_size = CHUNK_BYTES
        blob.upload_from_filename(str(src), content_type=content_type(src.name), retry=_retry())
    else:
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part{os.getpid()}-{threading.get_ident()}")
        try:
            shutil.copyfile(src, tmp)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)


def _parallel(fn: Callable[[Any], Any], items: Iterable[Any], parallelism: int,
              progress: TransferProgress | None = None) -> None:
    """Run `fn` on every item on a thread pool; the first failure cancels what has not started
    and is raised."""
    items = list(items)
    if not items:
        return
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(items)))) as pool:
        pending = {pool.submit(fn, it) for it in items}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in finished:
                exc = fut.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    raise exc
            done += len(finished)
            if progress is not None:
                progress(done, len(items))


def download_tree(prefix: str, dest: Path, parallelism: int = DEFAULT_PARALLELISM,
                  progress: TransferProgress | None = None) -> list[str]:
    """Copy every file under `prefix` into `dest`; returns the relative names."""
    names = list_files(prefix)
    _parallel(lambda n: download(join(prefix, n), Path(dest) / n), names, parallelism, progress)
    return names


def upload_tree(src: Path, prefix: str, parallelism: int = DEFAULT_PARALLELISM,
                progress: TransferProgress | None = None) -> list[str]:
    """Copy every file under the local folder `src` to `prefix`; returns the relative names."""
    src = Path(src)
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    _parallel(lambda n: upload(src / n, join(prefix, n)), names, parallelism, progress)
    return names


def delete(uri: str) -> None:
    """Delete one file (already gone is not an error)."""
    if is_gcs(uri):
        try:
            _blob(uri).delete(retry=_retry())
        except Exception as exc:
            if type(exc).__name__ != "NotFound":
                raise
        return
    Path(uri).unlink(missing_ok=True)


def delete_tree(prefix: str) -> None:
    """Delete every file under the folder / prefix `prefix` (nothing there is not an error)."""
    if is_gcs(prefix):
        bucket, key = gcs.split_uri(prefix)
        key = key.rstrip("/") + "/"
        blobs = list(gcs.client().list_blobs(bucket, prefix=key, retry=_retry()))

        def delete(blob: Any) -> None:
            try:
                blob.delete(retry=_retry())
            except Exception as exc:  # deleted meanwhile (a retried call, another writer)
                if type(exc).__name__ != "NotFound":
                    raise

        _parallel(delete, blobs, DEFAULT_PARALLELISM)
        return
    shutil.rmtree(prefix, ignore_errors=True)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(uri: str) -> str:
    """A content fingerprint of a file or of every file under a folder/prefix.

    Cloud Storage objects use their stored MD5/CRC32C (no download); local files are hashed.
    """
    h = hashlib.sha256()
    if is_gcs(uri):
        bucket, key = gcs.split_uri(uri)
        blob = gcs.client().bucket(bucket).get_blob(key, retry=_retry()) if key else None
        if blob is not None:
            h.update(f"{blob.name}:{blob.md5_hash or blob.crc32c}:{blob.size}".encode())
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            blobs = gcs.client().list_blobs(bucket, prefix=prefix, retry=_retry())
            for b in sorted(blobs, key=lambda b: b.name):
                h.update(f"{b.name[len(prefix):]}:{b.md5_hash or b.crc32c}:{b.size}\n".encode())
        return h.hexdigest()
    path = Path(uri)
    if path.is_file():
        return file_sha256(path)
    for name in list_files(uri):
        h.update(f"{name}:{file_sha256(path / name)}\n".encode())
    return h.hexdigest()
