"""Shared fixtures: real servers on free 127.0.0.1 ports, stopped by PID; the synthetic sample.

Servers are session-scoped (started once); the per-test fixtures hand out a clean state.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batch_jobs import cpu_malloc
from emulator import services
from emulator.processes import HOST

# Fast CPU torch in the processes the tests start (this one has them only when started by the Makefile).
cpu_malloc.for_children()

PROJECT = services.DEFAULT_PROJECT
REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject.toml (whose edits make `make setup` reinstall).
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU with CUDA and skips itself without one; "
                                       "bench/gpu/run.sh runs them on a GPU machine (docs/gpu-check.md)")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def redis_service(run_dir: Path) -> Iterator[services.Service]:
    svc = services.start_redis(run_dir)
    yield svc
    svc.stop()


@pytest.fixture
def redis_url(redis_service: services.Service) -> str:
    """A Redis URL with an empty database (the session's server, flushed)."""
    import redis

    url = redis_service.env["REDIS_URL"]
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture(scope="session")
def firestore_service(run_dir: Path) -> Iterator[services.Service]:
    svc = services.start_firestore(run_dir, project=PROJECT)
    old = {k: os.environ.get(k) for k in svc.env}
    os.environ.update(svc.env)
    yield svc
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    svc.stop()


@pytest.fixture
def firestore_host(firestore_service: services.Service) -> str:
    """FIRESTORE_EMULATOR_HOST of an emulator with no documents."""
    req = urllib.request.Request(
        f"http://{firestore_service.host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents",
        method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()
    return firestore_service.host


@pytest.fixture(scope="session")
def pubsub_service(run_dir: Path) -> Iterator[services.Service]:
    svc = services.start_pubsub(run_dir, project=PROJECT)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def gcs_service(run_dir: Path) -> Iterator[services.Service]:
    """fake-gcs-server (no events); STORAGE_EMULATOR_HOST set for the session."""
    svc = services.start_gcs(run_dir, project=PROJECT)
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = svc.env["STORAGE_EMULATOR_HOST"]
    yield svc  # core.gcs keeps a client per emulator host: no cached client to forget
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old
    svc.stop()


@pytest.fixture
def gcs_bucket(gcs_service: services.Service, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket in the storage emulator; returns its name."""
    import re
    import uuid

    from core import gcs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    gcs.client(PROJECT).create_bucket(name)
    return name


def _cached(out: Path, render: Callable[[Path], object]) -> Path:
    """Render into a private folder, then rename it into place: concurrent runs never see half."""
    if out.is_dir():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    render(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _sample_cache() -> Path:
    root = Path(os.environ.get("SPLATPIPE_TEST_CACHE", REPO / ".cache" / "test-samples"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def synthetic_video() -> dict[str, Path]:
    """The synthetic scene as a 3 s 480x360 H.264 video, 90 frames with known cameras (cached)."""
    from emulator.synthetic_scene import render_video_sample

    out = _cached(_sample_cache() / "video-90-480x360-v1",
                  lambda d: render_video_sample(d, n_frames=90, width=480, height=360))
    return {"video": out / "scene.mp4", "cameras": out / "cameras.json", "surface": out / "surface.npy"}


@pytest.fixture(scope="session")
def synthetic_images() -> dict[str, Path]:
    """The synthetic scene as 12 PNG photos, 640x480, with known cameras (cached)."""
    from emulator.synthetic_scene import render_image_sample

    out = _cached(_sample_cache() / "images-12-640x480-v1",
                  lambda d: render_image_sample(d, n_images=12, width=640, height=480))
    return {"images": out / "images", "cameras": out / "cameras.json", "surface": out / "surface.npy"}


__all__ = ["HOST", "PROJECT", "SHARED_DATASETS"]
