"""Starting workflow executions (contract 5): the one door from dispatch to Cloud Workflows.

On Google Cloud: google-cloud-workflows' `ExecutionsClient`. On the local stack
(`WORKFLOWS_EMULATOR_HOST` set): the local Workflows engine, which serves the Executions REST API
subset — `POST /v1/{workflow}/executions` with `{"argument": "<json string>"}`,
`GET /v1/{execution}`, `POST /v1/{execution}:cancel`. google-cloud-workflows (1.24) ships only
gRPC transports for `executions_v1`, so the local path speaks that REST API itself, with the same
resource names, bodies and responses as Google's (`https://workflowexecutions.googleapis.com`
takes exactly these requests).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from functions.config import Settings

ACTIVE_STATES = frozenset({"ACTIVE", "QUEUED"})


class ExecutorError(RuntimeError):
    """An execution could not be started / read (the executor is down or refused it)."""


class Executor(Protocol):
    def start(self, argument: Mapping[str, Any]) -> str:
        """Start an execution with this argument; its full resource name."""
        ...

    def state(self, execution: str) -> str | None:
        """ACTIVE, QUEUED, SUCCEEDED, FAILED, CANCELLED, …; None when unknown (not found, unreachable)."""
        ...

    def cancel(self, execution: str) -> None: ...


def workflow_path(settings: Settings) -> str:
    return f"projects/{settings.project}/locations/{settings.region}/workflows/{settings.workflow_name}"


class ExecutionsClientExecutor:
    """Google Cloud: the google-cloud-workflows `ExecutionsClient` (gRPC, the runtime's credentials)."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        from google.cloud.workflows import executions_v1

        self._types = executions_v1
        self.client = client or executions_v1.ExecutionsClient()
        self.parent = workflow_path(settings)

    def start(self, argument: Mapping[str, Any]) -> str:
        try:
            ex = self.client.create_execution(
                parent=self.parent, execution=self._types.Execution(argument=json.dumps(dict(argument))), timeout=30)
        except Exception as exc:
            raise ExecutorError(f"create_execution failed: {exc}") from exc
        return str(ex.name)

    def state(self, execution: str) -> str | None:
        try:
            ex = self.client.get_execution(name=execution, timeout=30)
        except Exception:
            return None
        return ex.state.name

    def cancel(self, execution: str) -> None:
        try:
            self.client.cancel_execution(name=execution, timeout=30)
        except Exception as exc:
            raise ExecutorError(f"cancel_execution failed: {exc}") from exc


class ExecutionsRestExecutor:
    """The Executions REST API at `base_url` (the local engine; Google's endpoint takes the same)."""

    def __init__(self, settings: Settings, base_url: str, session: Any = None, timeout: float = 30.0) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.parent = workflow_path(settings)

    def _url(self, path: str) -> str:
        return f"{self.base_url}/v1/{path}"

    def start(self, argument: Mapping[str, Any]) -> str:
        try:
            resp = self.session.post(self._url(f"{self.parent}/executions"),
                                     json={"argument": json.dumps(dict(argument))}, timeout=self.timeout)
        except Exception as exc:
            raise ExecutorError(f"cannot reach the Workflows executions API at {self.base_url}: {exc}") from exc
        if resp.status_code >= 300:
            raise ExecutorError(f"create execution: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            name = resp.json()["name"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ExecutorError(f"create execution: unexpected response {resp.text[:300]!r}") from exc
        return str(name)

    def state(self, execution: str) -> str | None:
        try:
            resp = self.session.get(self._url(execution), timeout=self.timeout)
            if resp.status_code != 200:
                return None
            return str(resp.json().get("state") or "") or None
        except Exception:
            return None

    def cancel(self, execution: str) -> None:
        try:
            resp = self.session.post(self._url(f"{execution}:cancel"), json={}, timeout=self.timeout)
        except Exception as exc:
            raise ExecutorError(f"cannot reach the Workflows executions API: {exc}") from exc
        if resp.status_code >= 300:
            raise ExecutorError(f"cancel execution: HTTP {resp.status_code}: {resp.text[:300]}")


class LazyExecutor:
    """Makes its executor on first use, so a pass that starts nothing never needs Workflows; a
    failure to make it (no credentials, say) is an :class:`ExecutorError` like any other."""

    def __init__(self, factory: Callable[[], Executor]) -> None:
        self._factory = factory
        self._made: Executor | None = None
        self._lock = threading.Lock()

    def _get(self) -> Executor:
        with self._lock:
            if self._made is None:
                try:
                    self._made = self._factory()
                except Exception as exc:
                    raise ExecutorError(f"cannot create the Workflows client: {exc}") from exc
            return self._made

    def start(self, argument: Mapping[str, Any]) -> str:
        return self._get().start(argument)

    def state(self, execution: str) -> str | None:
        try:
            return self._get().state(execution)
        except ExecutorError:
            return None

    def cancel(self, execution: str) -> None:
        self._get().cancel(execution)


def from_settings(settings: Settings) -> Executor:
    """The local engine when `WORKFLOWS_EMULATOR_HOST` is set, else Google Cloud Workflows."""
    if settings.workflows_emulator_host:
        host = settings.workflows_emulator_host
        base = host if host.startswith(("http://", "https://")) else "http://" + host
        return ExecutionsRestExecutor(settings, base)
    return ExecutionsClientExecutor(settings)
