"""`python -m emulator up | down | status | demo` — the local stack and the end-to-end demo.

  up      start the whole stack on 127.0.0.1 (see emulator/stack.py); print URLs and env
  down    stop exactly the processes `up` started (PID files in the run dir)
  status  say whether the stack is up, and where
  demo    a real reconstruction end to end (see emulator/demo.py); starts the stack if needed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emulator.stack import DEFAULT_RUN_DIR, Stack, StackConfig, StackInfo, running


def print_info(info: StackInfo) -> None:
    print(f"run dir: {info.run_dir}  (logs: <name>.log, Batch task logs: workflows/batch/<job>/)")
    print("URLs:")
    for name, url in info.urls.items():
        print(f"  {name:10} {url}")
    print("environment for clients (eval \"$(python -m emulator env)\"):")
    for k, v in info.env.items():
        print(f"  export {k}={v}")
    if info.depth_model_untrained:
        print(f"note: DEPTH_MODEL is an untrained stand-in ({info.depth_model}): depth maps are not meaningful; "
              f"set DEPTH_MODEL to real Depth-Anything-V2 weights (a directory) for real ones")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="PID files, logs, stack.json")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--max-concurrent-jobs", type=int, default=2)
    up.add_argument("--dispatch-every", type=float, default=5.0, help="seconds between scheduler ticks")
    sub.add_parser("down", help="stop the local stack")
    sub.add_parser("status", help="is the stack up?")
    sub.add_parser("env", help="print `export` lines for the running stack")
    demo = sub.add_parser("demo", help="a real reconstruction of the sample scene, end to end")
    demo.add_argument("--out", type=Path, default=None, help="where the outputs go (default demo-output/)")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    args = p.parse_args(argv)

    if args.command == "up":
        info = Stack(StackConfig(run_dir=args.run_dir, max_concurrent_jobs=args.max_concurrent_jobs,
                                 dispatch_every=args.dispatch_every)).up()
        print_info(info)
        return 0
    if args.command == "down":
        stopped = Stack(StackConfig(run_dir=args.run_dir)).down(quiet=True)
        print(f"stopped {len(stopped)} process(es)" + (f": {', '.join(stopped)}" if stopped else ""))
        return 0
    if args.command in ("status", "env"):
        info = running(args.run_dir)
        if info is None:
            print("the local stack is not up (python -m emulator up)", file=sys.stderr)
            return 1
        if args.command == "env":
            print("\n".join(f"export {k}={v}" for k, v in info.env.items()))
        else:
            print_info(info)
        return 0
    from emulator.demo import run_demo

    return run_demo(run_dir=args.run_dir, out=args.out, keep=args.keep, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
