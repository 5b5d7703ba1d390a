"""Clients of the local engine: the real google-cloud-workflows `ExecutionsClient`.

The library ships only a gRPC transport for Executions, so locally it talks gRPC over an
insecure channel to `WORKFLOWS_EMULATOR_HOST` (the engine answers REST on the same port too).
"""

from __future__ import annotations

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud.workflows.executions_v1 import ExecutionsClient
from google.cloud.workflows.executions_v1.services.executions.transports import ExecutionsGrpcTransport


def local_executions_client(host: str) -> ExecutionsClient:
    """`host` is "127.0.0.1:PORT" (an http:// prefix is dropped)."""
    host = host.removeprefix("http://").removeprefix("https://").rstrip("/")
    transport = ExecutionsGrpcTransport(channel=grpc.insecure_channel(host), credentials=AnonymousCredentials())
    return ExecutionsClient(transport=transport)
