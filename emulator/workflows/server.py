"""The local Workflows engine as one process: engine + local Batch runner, gRPC and REST fronts.

    python -m emulator.workflows --port 8090 --batch-port 8091 --run-dir RUN \
        --workflow reconstruct=workflows/reconstruct.yaml --env-file RUN/workflow-env.json

`--port` serves the Executions API (gRPC, grpc_api.py: `WORKFLOWS_EMULATOR_HOST`), `--batch-port`
the Batch REST subset and /healthz (rest_api.py: `BATCH_EMULATOR_HOST`); gRPC is up before /healthz
answers.

The workflow's user environment variables come from `--env-file` (a JSON object) and `--env
K=V`; the Batch tasks inherit this process's environment (the local stack's emulator variables).
SIGTERM stops it: active executions are cancelled and every task process is killed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from emulator.batch.runner import LocalBatch
from emulator.workflows.connectors import LocalConnectors
from emulator.workflows.executions import WorkflowsEngine
from emulator.workflows.grpc_api import GrpcServer
from emulator.workflows.rest_api import RestServer

log = logging.getLogger("emulator.workflows")


class EngineServer:
    """Everything the Workflows + Batch stand-in needs, started and stopped together."""

    def __init__(self, run_dir: Path, workflows: Mapping[str, Path], env: Mapping[str, str] | None = None, *,
                 project: str = "splatpipe-local", location: str = "us-central1", host: str = "127.0.0.1",
                 port: int = 0, batch_port: int = 0, batch_env: Mapping[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.batch = LocalBatch(self.run_dir / "batch", env=batch_env)
        self.connectors = LocalConnectors(self.batch)
        self.engine = WorkflowsEngine(self.connectors, project=project, location=location)
        for workflow_id, path in workflows.items():
            self.engine.deploy_file(workflow_id, Path(path), env or {})
        self.grpc = GrpcServer(self.engine, host, port)
        self.rest = RestServer(self.batch, host, batch_port, weather=self.connectors.weather)
        self.host = f"127.0.0.1:{self.grpc.port}"  # the Executions API (gRPC)
        self.batch_host = f"127.0.0.1:{self.rest.port}"  # the Batch REST subset, /healthz

    def start(self) -> EngineServer:
        self.grpc.start()
        self.rest.start()
        return self

    def stop(self) -> None:
        self.engine.cancel_all()
        self.batch.shutdown()
        self.rest.stop()
        self.grpc.stop()


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"{what} must be NAME=VALUE, got {item!r}")
        out[k] = v
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.workflows", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="the Executions API (gRPC)")
    p.add_argument("--batch-port", type=int, default=0, help="the Batch REST subset and /healthz")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--workflow", action="append", default=[], help="ID=PATH of a definition to deploy")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE user environment variable")
    p.add_argument("--env-file", type=Path, help="JSON object of user environment variables")
    p.add_argument("--project", default="splatpipe-local")
    p.add_argument("--location", default="us-central1")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = json.loads(args.env_file.read_text()) if args.env_file else {}
    env.update(_pairs(args.env, "--env"))
    workflows = {k: Path(v) for k, v in _pairs(args.workflow, "--workflow").items()}
    server = EngineServer(args.run_dir, workflows, env, project=args.project, location=args.location,
                          host=args.host, port=args.port, batch_port=args.batch_port).start()
    log.info("local Workflows engine: Executions (gRPC) on %s, Batch (REST) on %s; workflows: %s", server.host,
             server.batch_host, ", ".join(workflows))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
