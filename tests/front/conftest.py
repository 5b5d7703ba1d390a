"""Fixtures of the front-door tests: the control-plane fixtures of tests/functions (a flushed real
Redis, fresh buckets in the real storage emulator, the functions as apps), and the `api` function
served over real HTTP on 127.0.0.1 for the SDK and the CLI."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

_FUNCTION_TESTS = Path(__file__).resolve().parents[1] / "functions"
sys.path.insert(0, str(_FUNCTION_TESTS))
_spec = importlib.util.spec_from_file_location("function_tests_conftest", _FUNCTION_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

fn_apps = _shared.fn_apps
buckets = _shared.buckets
fn_env = _shared.fn_env
services_now = _shared.services_now


@pytest.fixture
def api_url(fn_apps, fn_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The `api` function on a real HTTP server (werkzeug, threaded) on a free port."""
    from werkzeug.serving import make_server

    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "1000")
    server = make_server("127.0.0.1", 0, fn_apps.api.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
