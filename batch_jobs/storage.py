"""Storage that takes `gs://bucket/key` URIs and local paths alike.

Cloud Storage goes through google-cloud-storage (it honours `STORAGE_EMULATOR_HOST`, so the
same code runs against fake-gcs-server). Downloads and uploads stream to and from files; many
files move in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

GCS_SCHEME = "gs://"
DEFAULT_PARALLELISM = 8


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri}")
    rest = uri[len(GCS_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with `/` (never `os.sep` semantics for gs://)."""
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


_client_lock = threading.Lock()
_client: Any = None


def gcs_client() -> Any:
    """A process-wide Cloud Storage client (anonymous against the emulator)."""
    global _client
    with _client_lock:
        if _client is None:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                _client = storage.Client(
                    project=os.environ.get("GOOGLE_CLOUD_PROJECT", "splatpipe-local"),
                    credentials=AnonymousCredentials(),
                )
            else:
                _client = storage.Client()
        return _client


def reset_client() -> None:
    """Forget the cached client (tests that switch emulators)."""
    global _client
    with _client_lock:
        _client = None


def _blob(uri: str) -> Any:
    bucket, key = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(key)


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return bool(_blob(uri).exists())
    return Path(uri).exists()


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        return _blob(uri).download_as_bytes()
    return Path(uri).read_bytes()


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    if is_gcs(uri):
        _blob(uri).upload_from_string(data, content_type=content_type or "application/octet-stream")
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic on one filesystem: readers never see half a file


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode(), "application/json")


def list_files(prefix: str) -> list[str]:
    """Names (relative to `prefix`, `/`-separated) of every file under the folder `prefix`."""
    if is_gcs(prefix):
        bucket, key = split_gcs(prefix)
        key = key.rstrip("/") + "/" if key else ""
        names = []
        for blob in gcs_client().list_blobs(bucket, prefix=key):
            rel = blob.name[len(key):]
            if rel and not rel.endswith("/"):
                names.append(rel)
        return sorted(names)
    root = Path(prefix)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def download(uri: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(uri):
        _blob(uri).download_to_filename(str(dest))
    else:
        shutil.copyfile(uri, dest)
    return dest


def upload(src: Path, uri: str) -> None:
    if is_gcs(uri):
        _blob(uri).upload_from_filename(str(src))
    else:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, uri)


def _parallel(fn: Callable[[Any], Any], items: Iterable[Any], parallelism: int) -> None:
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(items)))) as pool:
        for _ in pool.map(fn, items):
            pass  # map re-raises the first failure


def download_tree(prefix: str, dest: Path, parallelism: int = DEFAULT_PARALLELISM) -> list[str]:
    """Copy every file under `prefix` into `dest`; returns the relative names."""
    names = list_files(prefix)
    _parallel(lambda n: download(join(prefix, n), dest / n), names, parallelism)
    return names


def upload_tree(src: Path, prefix: str, parallelism: int = DEFAULT_PARALLELISM) -> list[str]:
    """Copy every file under the local folder `src` to `prefix`; returns the relative names."""
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    _parallel(lambda n: upload(src / n, join(prefix, n)), names, parallelism)
    return names


def delete_tree(prefix: str) -> None:
    if is_gcs(prefix):
        bucket, key = split_gcs(prefix)
        key = key.rstrip("/") + "/"
        blobs = list(gcs_client().list_blobs(bucket, prefix=key))
        _parallel(lambda b: b.delete(), blobs, DEFAULT_PARALLELISM)
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
        bucket, key = split_gcs(uri)
        blob = gcs_client().bucket(bucket).get_blob(key) if key else None
        if blob is not None:
            h.update(f"{blob.name}:{blob.md5_hash or blob.crc32c}:{blob.size}".encode())
        else:
            prefix = key.rstrip("/") + "/"
            for b in sorted(gcs_client().list_blobs(bucket, prefix=prefix), key=lambda b: b.name):
                h.update(f"{b.name[len(prefix):]}:{b.md5_hash or b.crc32c}:{b.size}\n".encode())
        return h.hexdigest()
    path = Path(uri)
    if path.is_file():
        return file_sha256(path)
    for name in list_files(uri):
        h.update(f"{name}:{file_sha256(path / name)}\n".encode())
    return h.hexdigest()
