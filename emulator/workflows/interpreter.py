"""Runs a parsed workflow definition: steps, jumps, scopes, calls, retries, errors.

Semantics kept from Google Cloud Workflows:
- a subworkflow call has its own variables; arguments and assigned values are copies;
- variables first assigned inside a `for` body live only for that iteration; assigning one that
  exists outside updates it;
- a `switch` whose matching branch has no `next` goes on with the step after the switch; the
  switch's own `next` applies when no branch matches;
- `try` re-runs its whole block while the retry predicate says so, waiting
  `initial_delay * multiplier ** n` (capped at `max_delay`) before retry n+1, then hands the last
  error to `except`;
- an error nobody catches ends the execution FAILED with that error.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from emulator.workflows import expressions as ex
from emulator.workflows import stdlib
from emulator.workflows.definition import Block, Definition, Step, Subworkflow
from emulator.workflows.errors import ExecutionCancelled, WorkflowError, tagged

log = logging.getLogger("emulator.workflows")

MAX_STEPS = 100_000
MAX_CALL_DEPTH = 20

Signal = tuple  # ("next", target) | ("seq",) | ("end",) | ("break",) | ("continue",) | ("return", value)


class Connectors(Protocol):
    """The `call:` targets that are not subworkflows or library functions (http.*, googleapis.*)."""

    def has(self, name: str) -> bool: ...

    def call(self, name: str, args: dict[str, Any], rt: ExecutionRuntime) -> Any: ...


class ExecutionRuntime:
    """One execution's environment: env vars, logs, cancellable sleep, where it is."""

    def __init__(self, env: Mapping[str, str], cancel: threading.Event | None = None,
                 on_log: Callable[[str, Any], None] | None = None) -> None:
        self.env = dict(env)
        self.cancel = cancel or threading.Event()
        self.logs: list[dict[str, Any]] = []
        self._on_log = on_log
        self.current: list[tuple[str, str]] = []  # (routine, step) stack
        self.steps_run = 0

    def log(self, severity: str, payload: Any) -> None:
        self.logs.append({"severity": severity, "payload": payload, "time": time.time()})
        if self._on_log:
            self._on_log(severity, payload)

    def sleep(self, seconds: float) -> None:
        if self.cancel.wait(max(0.0, seconds)):
            raise ExecutionCancelled()

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise ExecutionCancelled()


class _Scope:
    __slots__ = ("parent", "vars")

    def __init__(self, parent: _Scope | None = None) -> None:
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def owner(self, name: str) -> _Scope | None:
        s: _Scope | None = self
        while s is not None:
            if name in s.vars:
                return s
            s = s.parent
        return None


class _Frame(ex.Context):
    """One subworkflow invocation: its scopes, and what its expressions can reach."""

    def __init__(self, interp: Interpreter, routine: str) -> None:
        self.interp = interp
        self.routine = routine
        self.scope = _Scope()

    def has_variable(self, name: str) -> bool:
        return self.scope.owner(name) is not None

    def variable(self, name: str) -> Any:
        owner = self.scope.owner(name)
        if owner is None:
            raise tagged("KeyError", f"variable not defined: {name}")
        return owner.vars[name]

    def set(self, name: str, value: Any) -> None:
        (self.scope.owner(name) or self.scope).vars[name] = value

    def symbol(self, qualname: str) -> Any:
        return self.interp.symbol(qualname)

    def call_function(self, fn: str | ex.FunctionRef, args: list[Any]) -> Any:
        return self.interp.call_function(fn.name if isinstance(fn, ex.FunctionRef) else fn, args,
                                         in_expression=True)

    def eval(self, template: Any) -> Any:
        return ex.render(template, self)


def _copy(v: Any) -> Any:
    return copy.deepcopy(v) if isinstance(v, dict | list) else v


class Interpreter:
    def __init__(self, definition: Definition, rt: ExecutionRuntime, connectors: Connectors) -> None:
        self.definition = definition
        self.rt = rt
        self.connectors = connectors
        self.depth = 0

    # --- entry ------------------------------------------------------------------------------
    def run(self, argument: Any = None, entry: str = "main") -> Any:
        """Run `entry` with the execution argument; returns what it returns, or raises."""
        sub = self.definition.subworkflows[entry]
        args: dict[str, Any] = {}
        if sub.params:
            args[sub.params[0][0]] = argument
        return self.call_subworkflow(sub, args)

    # --- symbols and calls ------------------------------------------------------------------
    def symbol(self, qualname: str) -> Any:
        if qualname in stdlib.CONSTANTS:
            return copy.deepcopy(stdlib.CONSTANTS[qualname])
        if qualname in stdlib.FUNCTIONS or qualname in self.definition.subworkflows:
            return ex.FunctionRef(qualname)
        raise LookupError(qualname)

    def call_function(self, name: str, args: list[Any], *, in_expression: bool = False) -> Any:
        if name in self.definition.subworkflows:
            sub = self.definition.subworkflows[name]
            if len(args) > len(sub.params):
                raise tagged("TypeError", f"{name} takes {len(sub.params)} arguments, got {len(args)}")
            return self.call_subworkflow(sub, {p: a for (p, _), a in zip(sub.params, args, strict=False)})
        fn = stdlib.FUNCTIONS.get(name)
        if fn is None:
            raise tagged("KeyError", f"no function named {name}")
        if fn.blocking and in_expression:
            raise tagged("TypeError", f"{name} is a blocking call; use it in a call step")
        return stdlib.call(self.rt, fn, fn.bind(args=args))

    def call_subworkflow(self, sub: Subworkflow, args: Mapping[str, Any]) -> Any:
        unknown = set(args) - set(sub.param_names())
        if unknown:
            raise tagged("TypeError", f"{sub.name}: unknown argument(s) {', '.join(sorted(unknown))}")
        if self.depth >= MAX_CALL_DEPTH:
            raise tagged("RecursionError", f"call depth above {MAX_CALL_DEPTH} calling {sub.name}")
        frame = _Frame(self, sub.name)
        for pname, default in sub.params:
            if pname in args:
                frame.scope.vars[pname] = _copy(args[pname])
            elif sub.has_default(default):
                frame.scope.vars[pname] = _copy(default)
            else:
                raise tagged("TypeError", f"{sub.name}: missing argument {pname}")
        self.depth += 1
        try:
            sig = self.run_block(sub.body, frame)
        finally:
            self.depth -= 1
        if sig and sig[0] == "return":
            return sig[1]
        if sig and sig[0] == "next":
            raise tagged("SystemError", f"next: {sig[1]!r} not found in {sub.name}")
        return None

    def call_step(self, name: str, args: dict[str, Any]) -> Any:
        if name in self.definition.subworkflows:
            return self.call_subworkflow(self.definition.subworkflows[name], args)
        fn = stdlib.FUNCTIONS.get(name)
        if fn is not None:
            return stdlib.call(self.rt, fn, fn.bind(named=args))
        return self.connectors.call(name, args, self.rt)

    # --- steps ------------------------------------------------------------------------------
    def run_block(self, block: Block, frame: _Frame) -> Signal | None:
        i = 0
        while i < len(block.steps):
            step = block.steps[i]
            sig = self.run_step(step, frame)
            if sig is None:
                target = step.next
            elif sig[0] == "seq":
                target = None
            elif sig[0] == "next":
                target = sig[1]
            else:
                return sig
            if target is None:
                i += 1
                continue
            if target in ("end", "break", "continue"):
                return (target,)
            j = block.index.get(target)
            if j is None:
                return ("next", target)
            i = j
        return None

    def run_step(self, step: Step, frame: _Frame) -> Signal | None:
        rt = self.rt
        rt.check_cancel()
        rt.steps_run += 1
        if rt.steps_run > MAX_STEPS:
            raise tagged("ResourceLimitError", f"more than {MAX_STEPS} steps")
        rt.current.append((frame.routine, step.name))
        try:
            return self._run_step(step, frame)
        except WorkflowError as err:
            if not hasattr(err, "trace"):
                err.trace = list(rt.current)  # type: ignore[attr-defined]
            raise
        finally:
            rt.current.pop()

    def _run_step(self, step: Step, frame: _Frame) -> Signal | None:
        if step.assign is not None:
            for target, value in step.assign:
                self.assign(target, _copy(frame.eval(value)), frame)
            return None
        if step.call is not None:
            result = self.call_step(step.call, frame.eval(step.args or {}))
            if step.result:
                frame.set(step.result, _copy(result))
            return None
        if step.switch is not None:
            for cond in step.switch:
                ok = frame.eval(cond.expr)
                if not isinstance(ok, bool):
                    raise tagged("TypeError", f"switch condition must be a boolean, got {ex.type_name(ok)}")
                if ok:
                    sig = self._run_step(cond.action, frame)
                    if sig is None:
                        return ("next", cond.action.next) if cond.action.next else ("seq",)
                    return sig
            return None
        if step.for_ is not None:
            return self.run_for(step, frame)
        if step.try_ is not None:
            return self.run_try(step, frame)
        if step.raises:
            raise WorkflowError(_copy(frame.eval(step.raise_)))
        if step.returns:
            return ("return", _copy(frame.eval(step.return_)))
        if step.steps is not None:
            return self.run_block(step.steps, frame)
        return None

    def assign(self, target: ex.Node, value: Any, frame: _Frame) -> None:
        path: list[ex.Node] = []
        node = target
        while node[0] in ("attr", "index"):
            path.append(node)
            node = node[1]
        name = node[1]
        if not path:
            frame.set(name, value)
            return
        container = frame.variable(name)
        path.reverse()
        keys = [p[2] if p[0] == "attr" else ex.evaluate(p[2], frame) for p in path]
        for key, nxt in itertools.pairwise(keys):
            container = self._child(container, key, create=isinstance(nxt, str))
        self._put(container, keys[-1], value)

    @staticmethod
    def _child(container: Any, key: Any, create: bool) -> Any:
        if isinstance(container, dict) and isinstance(key, str):
            if key not in container and create:
                container[key] = {}
            return ex._field(container, key)
        return ex._field(container, key)

    @staticmethod
    def _put(container: Any, key: Any, value: Any) -> None:
        if isinstance(container, dict):
            if not isinstance(key, str):
                raise tagged("TypeError", f"map keys are strings, got {ex.type_name(key)}")
            container[key] = value
        elif isinstance(container, list):
            ex._field(container, key)  # bounds and type check
            container[key] = value
        else:
            raise tagged("TypeError", f"cannot assign into a {ex.type_name(container)}")

    def run_for(self, step: Step, frame: _Frame) -> Signal | None:
        spec = step.for_
        assert spec is not None
        if spec.items is not None:
            coll = frame.eval(spec.items)
            if isinstance(coll, list):
                values = list(coll)
            elif isinstance(coll, dict):
                values = list(coll.keys())
            else:
                raise tagged("TypeError", f"for: `in` needs a list or a map, got {ex.type_name(coll)}")
        else:
            bounds = frame.eval(spec.range)
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(ex.is_number(b) for b in bounds)):
                raise tagged("TypeError", "for: range is [start, end] with numbers")
            start, end = bounds
            values = []
            v = start
            while v <= end:
                values.append(v)
                v += 1
        outer = frame.scope
        try:
            for i, v in enumerate(values):
                frame.scope = _Scope(outer)
                frame.scope.vars[spec.value] = _copy(v)
                if spec.index:
                    frame.scope.vars[spec.index] = i
                sig = self.run_block(spec.body, frame)
                if sig is None or sig[0] == "continue":
                    continue
                if sig[0] == "break":
                    break
                return sig
        finally:
            frame.scope = outer
        return None

    def run_try(self, step: Step, frame: _Frame) -> Signal | None:
        spec = step.try_
        assert spec is not None
        attempt = 0
        while True:
            try:
                return self.run_block(spec.body, frame)
            except WorkflowError as err:
                if spec.retry is not None and self._should_retry(spec.retry.template, err, attempt, frame):
                    attempt += 1
                    continue
                if spec.except_body is None:
                    raise
                if spec.except_as:
                    frame.set(spec.except_as, _copy(err.value))
                return self.run_block(spec.except_body, frame)

    def _should_retry(self, template: Any, err: WorkflowError, attempt: int, frame: _Frame) -> bool:
        policy = frame.eval(template)
        if not isinstance(policy, dict):
            raise tagged("TypeError", "retry policy must be a map")
        max_retries = policy.get("max_retries", 0)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise tagged("ValueError", f"retry: max_retries must be a non-negative integer, got {max_retries!r}")
        if attempt >= max_retries:
            return False
        pred = policy.get("predicate")
        if isinstance(pred, str):
            pred = ex.FunctionRef(pred)
        if not isinstance(pred, ex.FunctionRef):
            raise tagged("TypeError", "retry: predicate must be a function or subworkflow")
        verdict = self.call_function(pred.name, [_copy(err.value)])
        if not isinstance(verdict, bool):
            raise tagged("TypeError", f"retry predicate {pred.name} must return a boolean, got {ex.type_name(verdict)}")
        if not verdict:
            return False
        backoff = policy.get("backoff") or stdlib.DEFAULT_BACKOFF
        try:
            initial = float(backoff.get("initial_delay", 1))
            mult = float(backoff.get("multiplier", 1.25))
            cap = float(backoff.get("max_delay", 60))
        except (TypeError, ValueError, AttributeError):
            raise tagged("TypeError", "retry: backoff needs numeric initial_delay, max_delay, multiplier") from None
        delay = min(initial * mult ** attempt, cap)
        log.debug("retry %d of %d after %.2fs: %s", attempt + 1, max_retries, delay, err)
        self.rt.sleep(delay)
        return True
