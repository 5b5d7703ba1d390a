"""Fixtures of the control-plane tests: the four functions as functions-framework apps, their
environment (a flushed real Redis, fresh buckets in the storage emulator).

Settings are read from the environment on every call, so a test changes configuration with
`monkeypatch.setenv` (the `fn_env` fixture sets the baseline).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from fn_testlib import FUNCTIONS_MAIN, PROJECT, Buckets, FnApps

from emulator import services


@pytest.fixture(scope="session")
def fn_apps() -> FnApps:
    from functions_framework import create_app

    def client(target: str) -> FlaskClient:
        return create_app(target, str(FUNCTIONS_MAIN)).test_client()

    return FnApps(api=client("api"), queue=client("queue"), on_upload=client("on_upload"),
                  dispatch=client("dispatch"))


@pytest.fixture
def buckets(gcs_service: services.Service) -> Buckets:
    from core import gcs

    suffix = uuid.uuid4().hex[:10]
    b = Buckets(uploads=f"uploads-{suffix}", data=f"data-{suffix}")
    client = gcs.client(PROJECT)
    client.create_bucket(b.uploads)
    client.create_bucket(b.data)
    return b


@pytest.fixture
def fn_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, buckets: Buckets) -> dict[str, str]:
    """The functions' environment against the test servers; no Firestore mirror, no dispatch poke."""
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "REDIS_URL": redis_url,
        "UPLOADS_BUCKET": buckets.uploads,
        "DATA_BUCKET": buckets.data,
        "FIRESTORE_MIRROR": "0",
        "RATE_LIMIT_PER_MINUTE": "10",
        "DEDUP_WINDOW_SECONDS": "3600",
        "MAX_CONCURRENT_JOBS": "2",
        "LEASE_SECONDS": "21600",
        "TRUSTED_PROXY_HOPS": "0",
        "EXTRA_INPUT_BUCKETS": "",
        "JOB_IMAGE": "europe-docker.pkg.dev/p/r/job:1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("DISPATCH_URL", "WORKFLOWS_EMULATOR_HOST", "BATCH_EMULATOR_HOST", "AUTH_AUDIENCE", "K_SERVICE", "MAX_ATTEMPTS"):
        monkeypatch.delenv(k, raising=False)
    return env


@pytest.fixture
def services_now(fn_env: dict[str, str]) -> Iterator[Any]:
    """The Services the functions use under the current environment (for direct assertions)."""
    from functions.config import Settings
    from functions.context import services as get

    yield lambda: get(Settings.from_env())
