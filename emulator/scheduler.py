"""Local Cloud Scheduler: call the dispatch function every few seconds.

On Google Cloud a Scheduler job calls `dispatch` every minute (a safety net: `api`, `on_upload`
and the workflow call it whenever something changes). Locally the tick is shorter so a lost
poke costs seconds, not a minute.

    python -m emulator.scheduler --url http://127.0.0.1:PORT --every 5
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

import requests

log = logging.getLogger("emulator.scheduler")


def tick(session: requests.Session, url: str) -> bool:
    try:
        resp = session.post(url, json={}, timeout=60)
    except requests.RequestException as exc:
        log.warning("dispatch tick failed: %s", exc)
        return False
    if resp.status_code >= 300:
        log.warning("dispatch tick: HTTP %s %s", resp.status_code, resp.text[:200])
        return False
    body = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
    if body.get("started") or body.get("requeued"):
        log.info("dispatch: %s", body)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.scheduler", description="local Cloud Scheduler")
    p.add_argument("--url", required=True, help="the dispatch function's URL")
    p.add_argument("--every", type=float, default=5.0, help="seconds between calls")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    session = requests.Session()
    log.info("calling %s every %.1fs", args.url, args.every)
    while not stop.wait(args.every):
        tick(session, args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
