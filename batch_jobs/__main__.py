"""`python -m batch_jobs run STAGE --workspace URI [--request-id ID] [--options JSON]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from core import logs
from core.batch_task import EXIT_BAD_INPUT
from core.record import STAGES

log = logging.getLogger("batch_jobs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_jobs", description="Run a splatpipe stage.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one stage on a workspace")
    run.add_argument("stage", choices=STAGES)
    run.add_argument("--workspace", required=True, help="gs://bucket/jobs/{id} or a local directory")
    run.add_argument("--request-id", default=None, help="request id for status reports")
    run.add_argument("--options", default=None, help="JSON object overriding request.json options")
    run.add_argument("--force", action="store_true", help="run even when _SUCCESS.json matches")
    args = parser.parse_args(argv)

    # One JSON object per line: Batch hands a task's output to Cloud Logging (logsPolicy
    # CLOUD_LOGGING), where every line of this run carries its request and stage (core.logs).
    logs.setup()
    options = None
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            print(f"error: --options is not valid JSON: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not isinstance(options, dict):
            print("error: --options must be a JSON object", file=sys.stderr)
            return EXIT_BAD_INPUT

    from batch_jobs.runner import run_stage

    with logs.context(request_id=args.request_id, stage=args.stage):
        log.info("%s: started on %s", args.stage, args.workspace)
        started = time.monotonic()
        result = run_stage(args.stage, args.workspace, args.request_id, options, force=args.force)
        took = time.monotonic() - started
        if result.error:
            log.error("%s: failed after %.1f s: [%s] %s", args.stage, took, result.error["code"],
                      result.error["message"])
        else:
            log.info("%s: %s in %.1f s", args.stage, result.status, took)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
