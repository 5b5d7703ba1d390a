"""Workflow executions: the one door from dispatch (and cancel) to Cloud Workflows.

Always google-cloud-workflows' `ExecutionsClient`, which ships only a gRPC transport for
Executions. On Google Cloud it uses the runtime's default credentials; on the local stack
(`WORKFLOWS_EMULATOR_HOST` set) it talks to the local engine (`emulator/workflows/grpc_api.py`)
over an insecure channel. The client is made on first use, so a pass that starts nothing never
needs Workflows; every failure, that one included, is an :class:`ExecutorError`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from functions.config import Settings

if TYPE_CHECKING:
    from google.cloud.workflows.executions_v1 import ExecutionsClient

ACTIVE_STATES = frozenset({"ACTIVE", "QUEUED"})
# What `Executor.state` answers for an execution Workflows does not have (gone, or never made).
NOT_FOUND = "NOT_FOUND"
TIMEOUT_SECONDS = 30.0


class ExecutorError(RuntimeError):
    """Workflows could not be reached, refused the call, or gave no answer."""


def workflow_path(settings: Settings) -> str:
    return f"projects/{settings.project}/locations/{settings.region}/workflows/{settings.workflow_name}"


def executions_client(emulator_host: str = "") -> ExecutionsClient:
    """The library's `ExecutionsClient`: default credentials, or the local engine at
    `emulator_host` ("127.0.0.1:PORT"; an http:// prefix is dropped) over an insecure channel."""
    from google.cloud.workflows import executions_v1

    if not emulator_host:
        return executions_v1.ExecutionsClient()
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.workflows.executions_v1.services.executions.transports import ExecutionsGrpcTransport

    host = emulator_host.removeprefix("http://").removeprefix("https://").rstrip("/")
    transport = ExecutionsGrpcTransport(channel=grpc.insecure_channel(host), credentials=AnonymousCredentials())
    return executions_v1.ExecutionsClient(transport=transport)


class Executor:
    """Start, read and cancel executions of the configured workflow (`workflow_path`)."""

    def __init__(self, settings: Settings, client: ExecutionsClient | None = None) -> None:
        self.settings = settings
        self.parent = workflow_path(settings)
        self._client = client
        self._lock = threading.Lock()

    def client(self) -> ExecutionsClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = executions_client(self.settings.workflows_emulator_host)
                except Exception as exc:
                    raise ExecutorError(f"cannot create the Workflows client: {exc}") from exc
            return self._client

    def start(self, argument: Mapping[str, Any]) -> str:
        """Start an execution with this argument; its full resource name."""
        from google.cloud.workflows.executions_v1 import Execution

        client = self.client()
        try:
            ex = client.create_execution(parent=self.parent, execution=Execution(argument=json.dumps(dict(argument))),
                                         timeout=TIMEOUT_SECONDS)
        except Exception as exc:
            raise ExecutorError(f"create_execution failed: {exc}") from exc
        return str(ex.name)

    def state(self, execution: str) -> str:
        """ACTIVE, QUEUED, SUCCEEDED, FAILED, CANCELLED, …, or NOT_FOUND; ExecutorError when
        Workflows cannot say (unreachable, or any other error)."""
        from google.api_core.exceptions import NotFound

        client = self.client()
        try:
            state = client.get_execution(name=execution, timeout=TIMEOUT_SECONDS).state
        except NotFound:
            return NOT_FOUND
        except Exception as exc:
            raise ExecutorError(f"get_execution failed: {exc}") from exc
        if not state:  # STATE_UNSPECIFIED
            raise ExecutorError(f"execution {execution} has no state")
        return str(state.name)

    def cancel(self, execution: str) -> None:
        client = self.client()
        try:
            client.cancel_execution(name=execution, timeout=TIMEOUT_SECONDS)
        except Exception as exc:
            raise ExecutorError(f"cancel_execution failed: {exc}") from exc
