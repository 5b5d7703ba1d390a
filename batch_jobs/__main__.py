"""`python -m batch_jobs run STAGE --workspace URI [--request-id ID] [--options JSON]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from core.batch_task import EXIT_BAD_INPUT
from core.record import STAGES


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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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

    result = run_stage(args.stage, args.workspace, args.request_id, options, force=args.force)
    if result.error:
        print(f"error: [{result.error['code']}] {result.error['message']}", file=sys.stderr)
    else:
        print(f"{args.stage}: {result.status}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
