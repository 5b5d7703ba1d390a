"""batch_jobs.storage against the real fake-gcs-server and on local paths: the same behaviour."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from batch_jobs import storage
from core import gcs


@pytest.fixture(params=["gcs", "local"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A base URI: a fresh emulator bucket, or a local folder."""
    if request.param == "gcs":
        bucket = request.getfixturevalue("gcs_bucket")
        return f"gs://{bucket}/base"
    return str(tmp_path / "store")


def _tree(src: Path, n: int) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        name = f"d{i % 3}/sub{i % 2}/f{i:03d}.bin" if i % 4 else f"top{i:03d}.json"
        data = os.urandom(100 + 37 * i)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
        files[name] = data
    return files


def test_bytes_json_exists_and_missing(root: str, tmp_path: Path) -> None:
    uri = storage.join(root, "a", "b.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"x": [1, 2]})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"x": [1, 2]}
    storage.write_bytes(uri, b"\x00\x01")  # overwrite
    assert storage.read_bytes(uri) == b"\x00\x01"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "nope.bin"))
    with pytest.raises(FileNotFoundError):
        storage.download(storage.join(root, "nope.bin"), tmp_path / "dl" / "nope.bin")
    assert not (tmp_path / "dl" / "nope.bin").exists()  # no half file left behind


def test_tree_round_trip_in_parallel_with_progress(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _tree(src, 40)
    seen: list[tuple[int, int]] = []
    names = storage.upload_tree(src, storage.join(root, "tree"), parallelism=8,
                                progress=lambda d, n: seen.append((d, n)))
    assert sorted(names) == sorted(files)
    assert seen[-1] == (40, 40) and all(n == 40 for _, n in seen)
    assert storage.list_files(storage.join(root, "tree")) == sorted(files)

    dest = tmp_path / "dest"
    got = storage.download_tree(storage.join(root, "tree"), dest)
    assert sorted(got) == sorted(files)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    # A sub-prefix lists relative to itself.
    assert storage.list_files(storage.join(root, "tree", "d1")) == sorted(
        n[len("d1/"):] for n in files if n.startswith("d1/"))


def test_large_file_streams_both_ways(root: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    size = storage.RESUMABLE_THRESHOLD + 3 * 1024 * 1024 + 17  # a resumable upload, odd length
    with open(big, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(size % (1 << 20)))
    uri = storage.join(root, "media", "big.bin")
    storage.upload(big, uri)
    back = storage.download(uri, tmp_path / "back" / "big.bin")
    assert back.stat().st_size == size
    assert storage.file_sha256(back) == storage.file_sha256(big)


def test_delete_tree_only_touches_its_prefix(root: str) -> None:
    for name in ("job/a.txt", "job/x/b.txt", "job2/c.txt", "jobfile.txt"):
        storage.write_bytes(storage.join(root, name), name.encode())
    storage.delete_tree(storage.join(root, "job"))
    assert storage.list_files(storage.join(root, "job")) == []
    assert storage.read_bytes(storage.join(root, "job2/c.txt")) == b"job2/c.txt"
    assert storage.read_bytes(storage.join(root, "jobfile.txt")) == b"jobfile.txt"
    storage.delete_tree(storage.join(root, "never-there"))  # nothing there: no error


def test_fingerprint_follows_content(root: str) -> None:
    storage.write_bytes(storage.join(root, "set/1.jpg"), b"one")
    storage.write_bytes(storage.join(root, "set/2.jpg"), b"two")
    fp_dir = storage.fingerprint(storage.join(root, "set"))
    fp_file = storage.fingerprint(storage.join(root, "set/1.jpg"))
    assert fp_dir == storage.fingerprint(storage.join(root, "set"))  # stable
    storage.write_bytes(storage.join(root, "set/2.jpg"), b"TWO")
    assert storage.fingerprint(storage.join(root, "set")) != fp_dir
    assert storage.fingerprint(storage.join(root, "set/1.jpg")) == fp_file
    storage.write_bytes(storage.join(root, "set/3.jpg"), b"three")  # a new file changes it too
    assert storage.fingerprint(storage.join(root, "set")) not in (fp_dir,)


def test_emulator_objects_have_content_types(gcs_bucket: str, tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "t" / "r.json").write_text("{}")
    storage.upload_tree(tmp_path / "t", f"gs://{gcs_bucket}/ct")
    bucket = gcs.client().bucket(gcs_bucket)
    assert bucket.get_blob("ct/a.jpg").content_type == "image/jpeg"
    assert bucket.get_blob("ct/r.json").content_type == "application/json"
    # The stored MD5 is what fingerprint() relies on: it must match the bytes.
    md5 = bucket.get_blob("ct/a.jpg").md5_hash
    import base64

    assert base64.b64decode(md5) == hashlib.md5(b"\xff\xd8\xff").digest()


def test_first_failure_in_a_parallel_transfer_is_raised(gcs_service: object, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 6)
    with pytest.raises(Exception) as info:
        storage.upload_tree(src, "gs://no-such-bucket-splatpipe/x", parallelism=3)
    assert "404" in str(info.value) or "NotFound" in type(info.value).__name__


def test_transient_errors_are_retried_not_client_errors() -> None:
    from google.api_core import exceptions

    policy = storage._retry()
    assert policy._predicate(exceptions.ServiceUnavailable("busy"))
    assert policy._predicate(exceptions.TooManyRequests("slow down"))
    assert not policy._predicate(exceptions.NotFound("gone"))
    assert not policy._predicate(exceptions.Forbidden("no"))
