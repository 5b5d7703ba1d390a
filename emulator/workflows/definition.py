"""A workflow definition: the YAML parsed into subworkflows and steps, and validated.

What deploying does on Google Cloud, as far as the local engine can tell before running: the
structure of every step, step names unique in a subworkflow, `next` targets that exist and are
reachable (not into a block, not out of a `for` body except `break`/`continue`/`end`), every
`${…}` expression parsable, calls to known functions, connectors and subworkflows with known
arguments, at most 50 assignments per `assign` step, expressions of at most 400 characters,
switch conditions that jump, run nested steps or return, blocking calls (`http.*`, `sys.sleep`,
`sys.log`, connectors) only in `call` steps, user environment variables with legal names.
Constructs the engine does not implement (`parallel`) are refused with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from emulator.workflows import expressions as ex
from emulator.workflows.errors import DefinitionError
from emulator.workflows.stdlib import FUNCTIONS

MAX_ASSIGNMENTS = 50
MAX_EXPRESSION_CHARS = 400  # Workflows' limit on one expression
# What a switch condition may carry besides `condition`: a jump or nested steps
# (https://cloud.google.com/workflows/docs/reference/syntax/conditions), or a `return` (Google's own
# polling sample: https://cloud.google.com/workflows/docs/reference/stdlib/sys/sleep).
CONDITION_KEYS = frozenset({"next", "steps", "return"})
RESERVED_ENV_PREFIXES = ("GOOGLE_", "WORKFLOWS_")
_MISSING = object()


@dataclass
class Block:
    steps: list[Step]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s.name: i for i, s in enumerate(self.steps)}


@dataclass
class RetrySpec:
    template: Any  # `${http.default_retry}` or {predicate, max_retries, backoff}


@dataclass
class ForSpec:
    value: str
    index: str | None
    items: Any  # template of `in:`, or None
    range: Any  # template of `range:`, or None
    body: Block


@dataclass
class TrySpec:
    body: Block
    retry: RetrySpec | None
    except_as: str | None
    except_body: Block | None


@dataclass
class Condition:
    expr: Any  # `${…}` string or a boolean literal
    action: Step  # what the branch does (next / steps / assign / call / return / raise)


@dataclass
class Step:
    name: str
    where: str
    next: str | None = None
    assign: list[tuple[ex.Node, Any]] | None = None
    call: str | None = None
    args: dict[str, Any] | None = None
    result: str | None = None
    switch: list[Condition] | None = None
    for_: ForSpec | None = None
    try_: TrySpec | None = None
    raise_: Any = _MISSING
    return_: Any = _MISSING
    steps: Block | None = None

    @property
    def raises(self) -> bool:
        return self.raise_ is not _MISSING

    @property
    def returns(self) -> bool:
        return self.return_ is not _MISSING


@dataclass
class Subworkflow:
    name: str
    params: list[tuple[str, Any]]  # (name, default or _MISSING)
    body: Block

    def required(self) -> list[str]:
        return [n for n, d in self.params if d is _MISSING]

    def param_names(self) -> list[str]:
        return [n for n, _ in self.params]

    @staticmethod
    def has_default(default: Any) -> bool:
        return default is not _MISSING


@dataclass
class Definition:
    subworkflows: dict[str, Subworkflow]
    source: str = ""

    @property
    def main(self) -> Subworkflow:
        return self.subworkflows["main"]


# --- parsing ----------------------------------------------------------------------------------

_STEP_KEYS = {
    "assign": {"assign", "next"},
    "call": {"call", "args", "result", "next"},
    "switch": {"switch", "next"},
    "for": {"for", "next"},
    "try": {"try", "retry", "except", "next"},
    "raise": {"raise"},
    "return": {"return"},
    "steps": {"steps", "next"},
    "next": {"next"},
}


def _kind(body: Mapping[str, Any], where: str) -> str:
    if "parallel" in body:
        raise DefinitionError("`parallel` is not supported by the local Workflows engine", where)
    for kind in ("call", "switch", "for", "try", "raise", "return", "steps", "assign", "next"):
        if kind in body:
            return kind
    raise DefinitionError(f"a step needs one of assign, call, switch, for, try, raise, return, steps, next; "
                          f"got {sorted(body)}", where)


def _check_expressions(value: Any, where: str) -> None:
    """Parse every `${…}` in a template now: a syntax error is a deploy error."""
    if ex.is_expression(value):
        if len(value) - 3 > MAX_EXPRESSION_CHARS:
            raise DefinitionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters", where)
        node = ex.parse_value(value)
        for name in ex.names_called(node):
            fn = FUNCTIONS.get(name)
            if name == "if":
                continue
            if (fn is not None and fn.blocking) or (name.startswith(("http.", "googleapis.")) and fn is None):
                raise DefinitionError(f"{name} is a blocking call: use it in a `call` step, not in an expression",
                                      where)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DefinitionError(f"map keys must be strings, got {k!r}", where)
            _check_expressions(k, where)
            _check_expressions(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_expressions(v, f"{where}[{i}]")


def _name(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise DefinitionError(f"{what} must be a variable name, got {value!r}", where)
    return value


def _assignments(items: Any, where: str) -> list[tuple[ex.Node, Any]]:
    if not isinstance(items, list) or not items:
        raise DefinitionError("assign must be a non-empty list of `- name: value`", where)
    if len(items) > MAX_ASSIGNMENTS:
        raise DefinitionError(f"at most {MAX_ASSIGNMENTS} assignments in one step, got {len(items)}", where)
    out = []
    for i, item in enumerate(items):
        w = f"{where}.assign[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise DefinitionError("each assignment is a single `- target: value`", w)
        (target, value), = item.items()
        try:
            node = ex.parse(str(target))
        except DefinitionError as exc:
            raise DefinitionError(f"bad assignment target {target!r}: {exc}", w) from None
        if not _is_target(node):
            raise DefinitionError(f"cannot assign to {target!r}", w)
        _check_expressions(value, w)
        out.append((node, value))
    return out


def _is_target(node: ex.Node) -> bool:
    while node[0] in ("attr", "index"):
        if node[0] == "index":
            _ = node[2]
        node = node[1]
    return node[0] == "name"


def _block(items: Any, where: str) -> Block:
    if not isinstance(items, list) or not items:
        raise DefinitionError("steps must be a non-empty list", where)
    steps = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise DefinitionError("each step is a single-key map `- step_name: {…}`", f"{where}[{i}]")
        (name, body), = item.items()
        steps.append(_step(str(name), body, f"{where}[{i}] {name}"))
    return Block(steps)


def _step(name: str, body: Any, where: str, kind: str | None = None) -> Step:
    if not isinstance(body, dict):
        raise DefinitionError("a step's body must be a map", where)
    kind = kind or _kind(body, where)
    extra = set(body) - _STEP_KEYS[kind]
    if extra:
        raise DefinitionError(f"unexpected {sorted(extra)} in a {kind} step", where)
    step = Step(name=name, where=where)
    if "next" in body:
        if not isinstance(body["next"], str):
            raise DefinitionError("next must be a step name", where)
        step.next = body["next"]
    if kind == "assign":
        step.assign = _assignments(body["assign"], where)
    elif kind == "call":
        if not isinstance(body["call"], str):
            raise DefinitionError("call must name a function or subworkflow", where)
        step.call = body["call"]
        args = body.get("args", {}) or {}
        if not isinstance(args, dict):
            raise DefinitionError("args must be a map", where)
        _check_expressions(args, f"{where}.args")
        step.args = args
        if "result" in body:
            step.result = _name(body["result"], "result", where)
    elif kind == "switch":
        conds = body["switch"]
        if not isinstance(conds, list) or not conds:
            raise DefinitionError("switch must be a non-empty list of conditions", where)
        step.switch = [_condition(c, f"{where}.switch[{i}]") for i, c in enumerate(conds)]
    elif kind == "for":
        step.for_ = _for(body["for"], f"{where}.for")
    elif kind == "try":
        step.try_ = _try(name, body, where)
    elif kind == "raise":
        _check_expressions(body["raise"], where)
        step.raise_ = body["raise"]
    elif kind == "return":
        _check_expressions(body["return"], where)
        step.return_ = body["return"]
    elif kind == "steps":
        step.steps = _block(body["steps"], f"{where}.steps")
    return step


def _condition(c: Any, where: str) -> Condition:
    if not isinstance(c, dict) or "condition" not in c:
        raise DefinitionError("each switch entry needs a `condition`", where)
    expr = c["condition"]
    if not (ex.is_expression(expr) or isinstance(expr, bool)):
        raise DefinitionError(f"condition must be an expression `${{…}}` or a boolean, got {expr!r}", where)
    _check_expressions(expr, where)
    rest = {k: v for k, v in c.items() if k != "condition"}
    if not rest or set(rest) - CONDITION_KEYS:
        raise DefinitionError(f"a condition takes next, steps or return (an action goes in a nested step), "
                              f"got {', '.join(sorted(rest)) or 'nothing'}", where)
    return Condition(expr, _step("condition", rest, where))


def _for(spec: Any, where: str) -> ForSpec:
    if not isinstance(spec, dict):
        raise DefinitionError("for must be a map", where)
    extra = set(spec) - {"value", "index", "in", "range", "steps"}
    if extra:
        raise DefinitionError(f"unexpected {sorted(extra)} in for", where)
    if ("in" in spec) == ("range" in spec):
        raise DefinitionError("for needs exactly one of `in` and `range`", where)
    if "value" not in spec:
        raise DefinitionError("for needs `value`", where)
    for key in ("in", "range"):
        if key in spec:
            _check_expressions(spec[key], f"{where}.{key}")
    if "range" in spec and not ex.is_expression(spec["range"]) and not (
            isinstance(spec["range"], list) and len(spec["range"]) == 2):
        raise DefinitionError("range must be [start, end]", where)
    return ForSpec(value=_name(spec["value"], "for value", where),
                   index=_name(spec["index"], "for index", where) if "index" in spec else None,
                   items=spec.get("in"), range=spec.get("range"),
                   body=_block(spec.get("steps"), f"{where}.steps"))


def _try(name: str, body: dict, where: str) -> TrySpec:
    t = body["try"]
    if not isinstance(t, dict):
        raise DefinitionError("try must be a map (a call or `steps`)", where)
    if "steps" in t:
        if set(t) != {"steps"}:
            raise DefinitionError("try with `steps` takes nothing else", where)
        block = _block(t["steps"], f"{where}.try.steps")
    elif "call" in t:
        block = Block([_step(name, t, f"{where}.try", kind="call")])
    else:
        raise DefinitionError("try holds a call or `steps`", where)
    retry = None
    if "retry" in body:
        r = body["retry"]
        if not (ex.is_expression(r) or isinstance(r, dict)):
            raise DefinitionError("retry must be an expression or a map", where)
        if isinstance(r, dict):
            extra = set(r) - {"predicate", "max_retries", "backoff"}
            if extra or "predicate" not in r or "max_retries" not in r:
                raise DefinitionError("retry needs predicate and max_retries (and optional backoff)", where)
        _check_expressions(r, f"{where}.retry")
        retry = RetrySpec(r)
    except_as = except_body = None
    if "except" in body:
        e = body["except"]
        if not isinstance(e, dict) or "steps" not in e or set(e) - {"as", "steps"}:
            raise DefinitionError("except needs `steps` (and optional `as`)", where)
        except_as = _name(e["as"], "except as", where) if "as" in e else None
        except_body = _block(e["steps"], f"{where}.except.steps")
    if retry is None and except_body is None:
        raise DefinitionError("try needs retry or except", where)
    return TrySpec(block, retry, except_as, except_body)


def _params(raw: Any, where: str) -> list[tuple[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DefinitionError("params must be a list", where)
    out: list[tuple[str, Any]] = []
    for p in raw:
        if isinstance(p, str):
            out.append((_name(p, "param", where), _MISSING))
        elif isinstance(p, dict) and len(p) == 1:
            (n, d), = p.items()
            out.append((_name(n, "param", where), d))
        else:
            raise DefinitionError(f"bad param {p!r}", where)
    return out


def parse_definition(source: str, *, connectors: Callable[[str], bool] = lambda name: False) -> Definition:
    """Parse and validate a definition; `connectors(name)` says which `call:` names the engine serves."""
    try:
        doc = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"not valid YAML: {exc}") from None
    if isinstance(doc, list):
        doc = {"main": {"steps": doc}}
    if not isinstance(doc, dict) or "main" not in doc:
        raise DefinitionError("a definition is a list of steps or a map of subworkflows with `main`")
    subs: dict[str, Subworkflow] = {}
    for name, body in doc.items():
        where = str(name)
        if not isinstance(body, dict) or "steps" not in body or set(body) - {"params", "steps"}:
            raise DefinitionError("a subworkflow is `{params: […], steps: […]}`", where)
        subs[str(name)] = Subworkflow(str(name), _params(body.get("params"), where),
                                      _block(body["steps"], f"{where}.steps"))
    if len(subs["main"].params) > 1:
        raise DefinitionError("main takes at most one parameter (the execution argument)", "main")
    definition = Definition(subs, source)
    for sub in subs.values():
        _validate(sub, definition, connectors)
    return definition


# --- validation -------------------------------------------------------------------------------

def _walk(block: Block) -> Iterator[tuple[Step, Block]]:
    for step in block.steps:
        yield step, block
        yield from _walk_step(step)


def _walk_step(step: Step) -> Iterator[tuple[Step, Block]]:
    if step.steps:
        yield from _walk(step.steps)
    if step.for_:
        yield from _walk(step.for_.body)
    if step.try_:
        yield from _walk(step.try_.body)
        if step.try_.except_body:
            yield from _walk(step.try_.except_body)
    for c in step.switch or []:
        yield from _walk_step(c.action)


def _validate(sub: Subworkflow, definition: Definition, connectors: Callable[[str], bool]) -> None:
    names: dict[str, str] = {}
    for step, _ in _walk(sub.body):
        if step.name == "condition":
            continue
        if step.name in names and not step.where.endswith(".try"):
            raise DefinitionError(f"step name {step.name!r} is used twice in {sub.name}", step.where)
        names[step.name] = step.where
    _check_jumps(sub.body, [], False, sub.name)
    for step, _ in _walk(sub.body):
        _check_call(step, definition, connectors)
        for c in step.switch or []:
            _check_call(c.action, definition, connectors)


def _check_call(step: Step, definition: Definition, connectors: Callable[[str], bool]) -> None:
    if step.call is None:
        return
    name = step.call
    if name in definition.subworkflows:
        sub = definition.subworkflows[name]
        args = step.args or {}
        unknown = set(args) - set(sub.param_names())
        missing = set(sub.required()) - set(args)
        if unknown or missing:
            raise DefinitionError(f"call {name}: unknown args {sorted(unknown)}, missing {sorted(missing)}",
                                  step.where)
        return
    if name in FUNCTIONS:
        fn = FUNCTIONS[name]
        unknown = set(step.args or {}) - set(fn.params)
        if unknown:
            raise DefinitionError(f"call {name}: unknown args {sorted(unknown)}", step.where)
        return
    if connectors(name):
        return
    raise DefinitionError(f"call {name}: not a subworkflow, a library function or a connector the local "
                          f"engine provides", step.where)


def _check_jumps(block: Block, outer: list[Block], in_for: bool, sub: str) -> None:
    """`next` goes to a step of this block or an enclosing one (never into a nested block,
    never out of a `for` body), or is end / break / continue."""
    visible = [block, *outer]
    for step in block.steps:
        targets = [step.next] + [c.action.next for c in step.switch or []]
        for t in targets:
            if t is None or t == "end":
                continue
            if t in ("break", "continue"):
                if not in_for:
                    raise DefinitionError(f"next: {t} outside a for loop", step.where)
                continue
            if not any(t in b.index for b in visible):
                raise DefinitionError(f"next: {t!r} is not a step this one can jump to in {sub}", step.where)
        for nested, fresh_for in _nested_blocks(step):
            if fresh_for:
                _check_jumps(nested, [], True, sub)
            else:
                _check_jumps(nested, visible, in_for, sub)


def _nested_blocks(step: Step) -> Iterator[tuple[Block, bool]]:
    if step.steps:
        yield step.steps, False
    if step.for_:
        yield step.for_.body, True
    if step.try_:
        yield step.try_.body, False
        if step.try_.except_body:
            yield step.try_.except_body, False
    for c in step.switch or []:
        yield from _nested_blocks(c.action)


def check_user_env(env: Mapping[str, str]) -> None:
    """User environment variables as Workflows accepts them at deploy time."""
    for k, v in env.items():
        if not k:
            raise DefinitionError("environment variable names cannot be empty")
        if k.startswith(RESERVED_ENV_PREFIXES):
            raise DefinitionError(f"environment variable {k}: names starting with GOOGLE_ or WORKFLOWS_ "
                                  f"are reserved")
        if not isinstance(v, str):
            raise DefinitionError(f"environment variable {k}: values are strings")
