"""The Cloud Batch v1 Job JSON the local runner accepts: checked as the API would, and read.

The subset the runner honours: one task group with `taskCount`, `parallelism` and a `taskSpec`
of `runnables` (container or script), `environment.variables`, `maxRetryCount`,
`maxRunDuration` and `lifecyclePolicies` (RETRY_TASK / FAIL_TASK on exit codes). Allocation
(machine type, GPUs, Spot), labels, logs policy and priority are checked and kept on the job but
change nothing locally. Anything else in a task spec the runner cannot honour is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class InvalidJob(ValueError):  # noqa: N818 - mirrors the API's INVALID_ARGUMENT
    """A 400 INVALID_ARGUMENT from jobs.create."""


JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
PARENT = re.compile(r"^projects/([^/]+)/locations/([^/]+)$")
DURATION = re.compile(r"^(\d+(?:\.\d{1,9})?)s$")
MAX_RETRY_COUNT = 10
PROVISIONING_MODELS = {"STANDARD", "SPOT", "PREEMPTIBLE", "RESERVATION_BOUND", "PROVISIONING_MODEL_UNSPECIFIED"}
LOG_DESTINATIONS = {"CLOUD_LOGGING", "PATH", "DESTINATION_UNSPECIFIED"}
_TASK_SPEC_KEYS = {"runnables", "computeResource", "maxRunDuration", "maxRetryCount", "lifecyclePolicies",
                   "environment", "environments", "volumes"}
_RUNNABLE_KEYS = {"container", "script", "barrier", "ignoreExitStatus", "background", "alwaysRun",
                  "environment", "timeout", "labels", "displayName"}


@dataclass(frozen=True)
class Runnable:
    kind: str  # container | script | barrier
    spec: dict[str, Any]
    env: dict[str, str]
    ignore_exit_status: bool
    background: bool
    always_run: bool
    timeout: float | None


@dataclass(frozen=True)
class LifecyclePolicy:
    action: str  # RETRY_TASK | FAIL_TASK
    exit_codes: frozenset[int]


@dataclass(frozen=True)
class TaskGroupSpec:
    task_count: int
    parallelism: int
    runnables: list[Runnable]
    env: dict[str, str]
    max_retry_count: int
    max_run_duration: float | None
    lifecycle: list[LifecyclePolicy] = field(default_factory=list)

    def action_for(self, exit_code: int) -> str | None:
        for p in self.lifecycle:
            if exit_code in p.exit_codes:
                return p.action
        return None


def parse_duration(value: Any, what: str) -> float:
    if not isinstance(value, str) or not DURATION.match(value):
        raise InvalidJob(f"{what} must be a duration like \"3600s\", got {value!r}")
    return float(value[:-1])


def _int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    # int64 fields arrive as JSON numbers or strings (proto3 JSON mapping).
    try:
        n = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        n = None
    if n is None or (isinstance(value, float) and not value.is_integer()) or n < lo or (hi is not None and n > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InvalidJob(f"{what} must be an integer {bound}, got {value!r}")
    return n


def _env(spec: Any, what: str) -> dict[str, str]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise InvalidJob(f"{what} must be an object")
    if spec.get("secretVariables") or spec.get("encryptedVariables"):
        raise InvalidJob(f"{what}: secretVariables / encryptedVariables are not supported by the local runner")
    variables = spec.get("variables") or {}
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise InvalidJob(f"{what}.variables must map names to strings")
    return {str(k): v for k, v in variables.items()}


def _runnable(r: Any, i: int) -> Runnable:
    what = f"taskSpec.runnables[{i}]"
    if not isinstance(r, dict):
        raise InvalidJob(f"{what} must be an object")
    extra = set(r) - _RUNNABLE_KEYS
    if extra:
        raise InvalidJob(f"{what}: unknown field(s) {sorted(extra)}")
    kinds = [k for k in ("container", "script", "barrier") if k in r]
    if len(kinds) != 1:
        raise InvalidJob(f"{what} needs exactly one of container, script, barrier")
    kind = kinds[0]
    spec = r[kind] or {}
    if kind == "container":
        if not isinstance(spec, dict) or not spec.get("imageUri"):
            raise InvalidJob(f"{what}.container.imageUri is required")
        cmds = spec.get("commands", [])
        if not isinstance(cmds, list) or not all(isinstance(c, str) for c in cmds):
            raise InvalidJob(f"{what}.container.commands must be a list of strings")
    if kind == "script" and (not isinstance(spec, dict) or not (spec.get("text") or spec.get("path"))):
        raise InvalidJob(f"{what}.script needs text or path")
    timeout = parse_duration(r["timeout"], f"{what}.timeout") if "timeout" in r else None
    return Runnable(kind, dict(spec), _env(r.get("environment"), f"{what}.environment"),
                    bool(r.get("ignoreExitStatus", False)), bool(r.get("background", False)),
                    bool(r.get("alwaysRun", False)), timeout)


def _labels(labels: Any, what: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise InvalidJob(f"{what} must be an object")
    for k, v in labels.items():
        if not LABEL_KEY.match(str(k)) or not isinstance(v, str) or not LABEL_VALUE.match(v):
            raise InvalidJob(f"{what}: bad label {k!r}={v!r} (lowercase letters, digits, - and _)")


def _allocation(policy: Any) -> None:
    if policy is None:
        return
    if not isinstance(policy, dict):
        raise InvalidJob("allocationPolicy must be an object")
    for i, inst in enumerate(policy.get("instances") or []):
        p = (inst or {}).get("policy") or {}
        model = p.get("provisioningModel", "STANDARD")
        if model not in PROVISIONING_MODELS:
            raise InvalidJob(f"allocationPolicy.instances[{i}].policy.provisioningModel: unknown {model!r}")
        for j, acc in enumerate(p.get("accelerators") or []):
            if not isinstance(acc, dict) or not acc.get("type"):
                raise InvalidJob(f"allocationPolicy.instances[{i}].policy.accelerators[{j}].type is required")
            _int(acc.get("count", 1), f"allocationPolicy.instances[{i}].policy.accelerators[{j}].count", 1)
    sa = policy.get("serviceAccount")
    if sa is not None and not (isinstance(sa, dict) and isinstance(sa.get("email", ""), str)):
        raise InvalidJob("allocationPolicy.serviceAccount.email must be a string")


def parse_job(parent: str, job_id: str, body: Any) -> TaskGroupSpec:
    """Check a jobs.create request; the task group's spec to run."""
    if not PARENT.match(parent or ""):
        raise InvalidJob(f"parent must be projects/{{project}}/locations/{{location}}, got {parent!r}")
    if not JOB_ID.match(job_id or ""):
        raise InvalidJob(f"jobId {job_id!r}: at most 63 characters, lowercase letters, digits and '-', "
                         f"starting with a letter and not ending with '-'")
    if not isinstance(body, dict):
        raise InvalidJob("the job body must be an object")
    groups = body.get("taskGroups")
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
        raise InvalidJob("taskGroups must hold exactly one task group")
    group = groups[0]
    ts = group.get("taskSpec")
    if not isinstance(ts, dict):
        raise InvalidJob("taskGroups[0].taskSpec is required")
    extra = set(ts) - _TASK_SPEC_KEYS
    if extra:
        raise InvalidJob(f"taskSpec: unknown field(s) {sorted(extra)}")
    if ts.get("volumes"):
        raise InvalidJob("taskSpec.volumes are not supported by the local runner")
    runnables = ts.get("runnables")
    if not isinstance(runnables, list) or not runnables:
        raise InvalidJob("taskSpec.runnables must be a non-empty list")
    lifecycle = []
    for i, p in enumerate(ts.get("lifecyclePolicies") or []):
        action = (p or {}).get("action")
        if action not in ("RETRY_TASK", "FAIL_TASK"):
            raise InvalidJob(f"taskSpec.lifecyclePolicies[{i}].action must be RETRY_TASK or FAIL_TASK")
        codes = ((p.get("actionCondition") or {}).get("exitCodes")) or []
        if not isinstance(codes, list) or not codes:
            raise InvalidJob(f"taskSpec.lifecyclePolicies[{i}].actionCondition.exitCodes must be a non-empty list")
        lifecycle.append(LifecyclePolicy(action, frozenset(_int(c, "exit code", -(2**31)) for c in codes)))
    task_count = _int(group.get("taskCount", 1), "taskCount", 1, 10000)
    parallelism = _int(group.get("parallelism", task_count), "parallelism", 1)
    _labels(body.get("labels"), "labels")
    _allocation(body.get("allocationPolicy"))
    logs = body.get("logsPolicy") or {}
    if logs.get("destination", "CLOUD_LOGGING") not in LOG_DESTINATIONS:
        raise InvalidJob(f"logsPolicy.destination: unknown {logs.get('destination')!r}")
    if "priority" in body:
        _int(body["priority"], "priority", 0, 99)
    return TaskGroupSpec(
        task_count=task_count,
        parallelism=min(parallelism, task_count),
        runnables=[_runnable(r, i) for i, r in enumerate(runnables)],
        env=_env(ts.get("environment"), "taskSpec.environment"),
        max_retry_count=_int(ts.get("maxRetryCount", 0), "taskSpec.maxRetryCount", 0, MAX_RETRY_COUNT),
        max_run_duration=(parse_duration(ts["maxRunDuration"], "taskSpec.maxRunDuration")
                          if "maxRunDuration" in ts else None),
        lifecycle=lifecycle,
    )
