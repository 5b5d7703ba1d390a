"""The whole local stack, once per session: `python -m emulator up` as the demo uses it.

Differences from the defaults, for test time only: the scheduler ticks every second, leases last
20 s (so a request whose workflow died is re-run within the test), and the rate limit is high
enough for the tests' submissions; webhooks are signed with WEBHOOK_SECRET.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stackclient import StackClient

from emulator.processes import pid_alive
from emulator.stack import Stack, StackConfig

WEBHOOK_SECRET = "e2e-webhook-secret"  # the functions sign webhooks with it (functions/webhooks/signing.py)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackClient]:
    run_dir = tmp_path_factory.mktemp("stack")
    s = Stack(StackConfig(run_dir=run_dir, max_concurrent_jobs=2, dispatch_every=1.0,
                          extra_env={"LEASE_SECONDS": "20", "RATE_LIMIT_PER_MINUTE": "1000",
                                     "WEBHOOK_SECRET": WEBHOOK_SECRET}))
    info = s.up(log=lambda msg: None)
    try:
        yield StackClient(info)
    finally:
        s.down(quiet=True)
        alive = [name for name, pid in info.processes.items() if pid_alive(pid)]
        assert not alive, f"`down` left {alive} running"


@pytest.fixture(scope="session")
def video_uri(stack: StackClient, synthetic_video: dict[str, Path]) -> str:
    """The synthetic sample video in the uploads bucket under a prefix on_upload ignores."""
    return stack.put_object(stack.uploads, "e2e-shared/_api/scene.mp4", synthetic_video["video"].read_bytes())
