"""Deployed workflows and their executions, as the Workflows Executions API reports them.

An execution runs in its own thread: ACTIVE, then SUCCEEDED (with `result`, the JSON of what
`main` returned), FAILED (with `error.payload`, `error.context` and a stack trace) or CANCELLED.
Every workflow sees the built-in environment variables (GOOGLE_CLOUD_PROJECT_ID,
GOOGLE_CLOUD_LOCATION, GOOGLE_CLOUD_WORKFLOW_ID, GOOGLE_CLOUD_WORKFLOW_REVISION_ID,
GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID, GOOGLE_CLOUD_PROJECT_NUMBER) besides its user variables.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.workflows.definition import Definition, check_user_env, parse_definition
from emulator.workflows.errors import ExecutionCancelled, WorkflowError
from emulator.workflows.interpreter import Connectors, ExecutionRuntime, Interpreter

log = logging.getLogger("emulator.workflows")

MAX_ARGUMENT_BYTES = 32 * 1024
ACTIVE, SUCCEEDED, FAILED, CANCELLED = "ACTIVE", "SUCCEEDED", "FAILED", "CANCELLED"


class ApiError(Exception):
    """An Executions API error: HTTP code, canonical status, message."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


def _stamp(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Deployed:
    name: str  # projects/{p}/locations/{l}/workflows/{w}
    workflow_id: str
    definition: Definition
    env: dict[str, str]
    revision_id: str


@dataclass
class Execution:
    name: str
    execution_id: str
    workflow: Deployed
    argument: str
    labels: dict[str, str]
    call_log_level: str
    rt: ExecutionRuntime
    state: str = ACTIVE
    result: str | None = None
    error: dict[str, Any] | None = None
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    created: dict[str, Any] = field(default_factory=dict)  # as the create call answers it (ACTIVE)

    def to_json(self, view: str = "FULL") -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "startTime": _stamp(self.start_time),
            "state": self.state,
            "workflowRevisionId": self.workflow.revision_id,
            "callLogLevel": self.call_log_level,
            "labels": dict(self.labels),
        }
        if self.end_time is not None:
            out["endTime"] = _stamp(self.end_time)
            out["duration"] = f"{self.end_time - self.start_time:.6f}s"
        if view != "BASIC":
            out["argument"] = self.argument
            if self.result is not None:
                out["result"] = self.result
            if self.error is not None:
                out["error"] = self.error
            current = list(self.rt.current)
            if self.state == ACTIVE and current:
                # A try around a single call runs that call as a step of the same name: show it once.
                steps = [c for i, c in enumerate(current) if i == 0 or c != current[i - 1]]
                out["status"] = {"currentSteps": [{"routine": r, "step": s} for r, s in steps]}
        return out


class WorkflowsEngine:
    """Deploy definitions; create, get, list, cancel and wait for executions."""

    def __init__(self, connectors: Connectors, *, project: str = "splatpipe-local", location: str = "us-central1",
                 project_number: str = "000000000000", log_dir: Path | None = None) -> None:
        self.connectors = connectors
        self.project = project
        self.location = location
        self.project_number = project_number
        self.log_dir = log_dir
        self._workflows: dict[str, Deployed] = {}
        self._executions: dict[str, Execution] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()

    def workflow_name(self, workflow_id: str, project: str | None = None, location: str | None = None) -> str:
        return f"projects/{project or self.project}/locations/{location or self.location}/workflows/{workflow_id}"

    # --- deploy -----------------------------------------------------------------------------
    def deploy(self, workflow_id: str, source: str, env: Mapping[str, str] | None = None) -> Deployed:
        """Parse and validate; raises DefinitionError (the deploy is refused)."""
        env = dict(env or {})
        check_user_env(env)
        definition = parse_definition(source, connectors=self.connectors.has)
        revision = f"{len([n for n in self._workflows if n.endswith('/' + workflow_id)]) + 1:06d}-{uuid.uuid4().hex[:3]}"
        dep = Deployed(self.workflow_name(workflow_id), workflow_id, definition, env, revision)
        with self._lock:
            self._workflows[dep.name] = dep
        return dep

    def deploy_file(self, workflow_id: str, path: Path, env: Mapping[str, str] | None = None) -> Deployed:
        return self.deploy(workflow_id, Path(path).read_text(), env)

    # --- executions -------------------------------------------------------------------------
    def create_execution(self, workflow: str, argument: str | None = None, *, labels: Mapping[str, str] | None = None,
                         call_log_level: str = "CALL_LOG_LEVEL_UNSPECIFIED") -> Execution:
        """`workflow` is a full workflow name or a workflow id in this engine's project/location."""
        name = workflow if workflow.startswith("projects/") else self.workflow_name(workflow)
        dep = self._workflows.get(name)
        if dep is None:
            raise ApiError(404, "NOT_FOUND", f"Resource '{name}' was not found")
        argument = argument or ""
        if len(argument.encode()) > MAX_ARGUMENT_BYTES:
            raise ApiError(400, "INVALID_ARGUMENT", f"argument is larger than {MAX_ARGUMENT_BYTES} bytes")
        try:
            arg_value = json.loads(argument) if argument.strip() else None
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"argument is not valid JSON: {exc}") from None
        exec_id = str(uuid.uuid4())
        env = {
            **dep.env,
            "GOOGLE_CLOUD_PROJECT_ID": name.split("/")[1],
            "GOOGLE_CLOUD_PROJECT_NUMBER": self.project_number,
            "GOOGLE_CLOUD_LOCATION": name.split("/")[3],
            "GOOGLE_CLOUD_WORKFLOW_ID": dep.workflow_id,
            "GOOGLE_CLOUD_WORKFLOW_REVISION_ID": dep.revision_id,
            "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID": exec_id,
        }
        ex_name = f"{name}/executions/{exec_id}"
        rt = ExecutionRuntime(env, on_log=lambda sev, payload: self._log(ex_name, sev, payload))
        execution = Execution(ex_name, exec_id, dep, argument, dict(labels or {}), call_log_level, rt)
        execution.created = execution.to_json()
        with self._lock:
            self._executions[ex_name] = execution
            self._order.append(ex_name)
        threading.Thread(target=self._run, args=(execution, arg_value), name=f"execution-{exec_id[:8]}",
                         daemon=True).start()
        return execution

    def get(self, name: str) -> Execution:
        with self._lock:
            execution = self._executions.get(name)
        if execution is None:
            raise ApiError(404, "NOT_FOUND", f"Resource '{name}' was not found")
        return execution

    def list(self, workflow_name: str, state_filter: str | None = None) -> list[Execution]:
        """Newest first, as the API lists them."""
        with self._lock:
            found = [self._executions[n] for n in reversed(self._order) if n.startswith(workflow_name + "/executions/")]
        if state_filter:
            found = [e for e in found if e.state == state_filter]
        return found

    def cancel(self, name: str) -> Execution:
        execution = self.get(name)
        if execution.state != ACTIVE:
            raise ApiError(400, "FAILED_PRECONDITION", f"Execution {name} is not active (it is {execution.state})")
        execution.rt.cancel.set()
        execution.done.wait(30)
        return execution

    def wait(self, name: str, timeout: float | None = None) -> Execution:
        execution = self.get(name)
        execution.done.wait(timeout)
        return execution

    def cancel_all(self) -> None:
        with self._lock:
            active = [e for e in self._executions.values() if e.state == ACTIVE]
        for e in active:
            e.rt.cancel.set()

    # --- running ----------------------------------------------------------------------------
    def _log(self, name: str, severity: str, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        log.info("[%s] %s %s", name.rsplit("/", 1)[-1][:8], severity, text)

    def _run(self, execution: Execution, argument: Any) -> None:
        interp = Interpreter(execution.workflow.definition, execution.rt, self.connectors)
        try:
            value = interp.run(argument)
            execution.result = json.dumps(value, default=_json_default)
            execution.state = SUCCEEDED
        except ExecutionCancelled:
            execution.state = CANCELLED
        except WorkflowError as err:
            execution.error = _error_json(err)
            execution.state = FAILED
        except Exception as exc:  # an engine bug: report it like an internal error, keep serving
            log.exception("execution %s crashed", execution.name)
            execution.error = {"payload": json.dumps({"message": f"{type(exc).__name__}: {exc}",
                                                      "tags": ["SystemError"]}),
                               "context": "local Workflows engine internal error"}
            execution.state = FAILED
        finally:
            execution.end_time = time.time()
            execution.done.set()
            log.info("execution %s %s", execution.name.rsplit("/", 1)[-1], execution.state)


def _json_default(v: Any) -> Any:
    if isinstance(v, bytes):
        import base64

        return base64.b64encode(v).decode()
    return str(v)


def _error_json(err: WorkflowError) -> dict[str, Any]:
    value = err.value
    payload = value if isinstance(value, str) else json.dumps(value, default=_json_default)
    trace = getattr(err, "trace", [])
    where = f'in step "{trace[-1][1]}", routine "{trace[-1][0]}"' if trace else ""
    kind = ", ".join(err.tags) or "RuntimeError"
    return {
        "payload": payload,
        "context": f"{kind}: {payload}\n{where}".strip(),
        "stackTrace": {"elements": [{"step": s, "routine": r, "position": {"line": "0", "column": "0", "length": "0"}}
                                    for r, s in reversed(trace)]},
    }


STATE_FILTER = re.compile(r'^\s*state\s*=\s*"?(ACTIVE|SUCCEEDED|FAILED|CANCELLED)"?\s*$')
