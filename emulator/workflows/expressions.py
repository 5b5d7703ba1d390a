"""`${…}` expressions of Google Cloud Workflows: tokenizer, parser and evaluator.

The language, as documented: numbers, strings (double or single quotes), `true`/`false`/`null`,
variables, `a.b`, `a["b"]`, `list[0]`, list and map literals (`["a", "b"]`, `{"k": v}`),
function calls (`len(x)`, `map.get(m, ["a", "b"])`), unary `-` and `not`, `* / % //`, `+ -`,
comparisons and `in`, `and`, `or` — in that order of precedence. A YAML map key may be an
expression too (`{"${key}": value}`).
Types are strict as on Google Cloud: `"a" + 1` is a TypeError, `true == 1` is false, `and`/`or`
want booleans, `/` always gives a double.

A value is an expression when the whole YAML string is `${…}`; anything else is literal text.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from emulator.workflows.errors import DefinitionError, WorkflowError, tagged

Node = tuple  # ("lit", v) | ("name", n) | ("attr", node, n) | ("index", node, node) | ("call", node, [nodes])
#               | ("unary", op, node) | ("binary", op, node, node)


@dataclass(frozen=True)
class FunctionRef:
    """A function used as a value: `${http.default_retry_predicate}` or a subworkflow's name."""

    name: str


class Context(Protocol):
    """What an expression can see: the variables in scope and the global symbols."""

    def has_variable(self, name: str) -> bool: ...

    def variable(self, name: str) -> Any: ...

    def symbol(self, qualname: str) -> Any:
        """A standard-library constant or function, or a subworkflow; LookupError if none."""
        ...

    def call_function(self, fn: str | FunctionRef, args: list[Any]) -> Any: ...


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


# --- tokenizer ------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>//|==|!=|<=|>=|[-+*/%<>()\[\]{},.:])
""", re.VERBOSE | re.DOTALL)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", '"': '"', "'": "'", "/": "/"}
_BOOLEANS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _unquote(raw: str) -> str:
    out, i, body = [], 0, raw[1:-1]
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2:i + 6] or ""):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise DefinitionError(f"unknown escape \\{nxt} in string literal {raw}")
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, Any]]:
    toks: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise DefinitionError(f"unexpected character {text[pos]!r} at {pos} in expression ${{{text}}}")
        pos = m.end()
        kind = m.lastgroup
        val = m.group()
        if kind == "ws":
            continue
        if kind == "num":
            toks.append(("lit", float(val) if any(c in val for c in ".eE") else int(val)))
        elif kind == "str":
            toks.append(("lit", _unquote(val)))
        elif kind == "name":
            if val in _BOOLEANS:
                toks.append(("lit", _BOOLEANS[val]))
            elif val == "null":
                toks.append(("lit", None))
            elif val in ("and", "or", "not", "in"):
                toks.append(("op", val))
            else:
                toks.append(("name", val))
        else:
            toks.append(("op", val))
    toks.append(("eof", None))
    return toks


# --- parser (precedence climbing) -------------------------------------------------------------

_INFIX = {"or": 1, "and": 2, "==": 3, "!=": 3, "<": 3, ">": 3, "<=": 3, ">=": 3, "in": 3,
          "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "//": 5}
_UNARY_BP = 6


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, op: str) -> None:
        kind, val = self.take()
        if kind != "op" or val != op:
            raise self.error(f"expected {op!r}, found {val!r}")

    def error(self, msg: str) -> DefinitionError:
        return DefinitionError(f"{msg} in expression ${{{self.text}}}")

    def parse(self) -> Node:
        node = self.expr(0)
        if self.peek()[0] != "eof":
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self, min_bp: int) -> Node:
        left = self.prefix()
        while True:
            kind, val = self.peek()
            bp = _INFIX.get(val) if kind == "op" else None
            if bp is None or bp <= min_bp:
                return left
            self.take()
            left = ("binary", val, left, self.expr(bp))

    def prefix(self) -> Node:
        kind, val = self.take()
        if kind == "op" and val in ("-", "not"):
            return ("unary", val, self.expr(_UNARY_BP))
        if kind == "lit":
            node: Node = ("lit", val)
        elif kind == "name":
            node = ("name", val)
        elif kind == "op" and val == "(":
            node = self.expr(0)
            self.expect(")")
        elif kind == "op" and val == "[":
            node = ("list", self.items("]"))
        elif kind == "op" and val == "{":
            node = ("map", self.pairs())
        else:
            raise self.error(f"unexpected {val!r}" if kind != "eof" else "unexpected end")
        return self.postfix(node)

    def items(self, close: str) -> list[Node]:
        out: list[Node] = []
        if self.peek() == ("op", close):
            self.take()
            return out
        while True:
            out.append(self.expr(0))
            if self.peek() == ("op", ","):
                self.take()
                continue
            self.expect(close)
            return out

    def pairs(self) -> list[tuple[Node, Node]]:
        out: list[tuple[Node, Node]] = []
        if self.peek() == ("op", "}"):
            self.take()
            return out
        while True:
            key = self.expr(0)
            self.expect(":")
            out.append((key, self.expr(0)))
            if self.peek() == ("op", ","):
                self.take()
                continue
            self.expect("}")
            return out

    def postfix(self, node: Node) -> Node:
        while True:
            kind, val = self.peek()
            if kind != "op":
                return node
            if val == ".":
                self.take()
                k2, name = self.take()
                if k2 != "name" and not (k2 == "op" and name in ("in", "and", "or", "not")):
                    raise self.error(f"expected a field name after '.', found {name!r}")
                node = ("attr", node, name)
            elif val == "[":
                self.take()
                idx = self.expr(0)
                self.expect("]")
                node = ("index", node, idx)
            elif val == "(":
                self.take()
                args: list[Node] = []
                if self.peek() != ("op", ")"):
                    while True:
                        args.append(self.expr(0))
                        if self.peek() == ("op", ","):
                            self.take()
                            continue
                        break
                self.expect(")")
                node = ("call", node, args)
            else:
                return node


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Node:
    """Parse the inside of `${…}`; DefinitionError on a syntax error."""
    if not text.strip():
        raise DefinitionError("empty expression ${}")
    return _Parser(text).parse()


def parse_value(value: str) -> Node:
    """Parse a whole `${…}` string."""
    return parse(value[2:-1])


# --- values -----------------------------------------------------------------------------------

def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bytes):
        return "bytes"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, FunctionRef):
        return "function"
    return type(v).__name__


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def equal(a: Any, b: Any) -> bool:
    """Workflows equality: numbers compare by value; other types only with their own type."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return a == b
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _type_error(op: str, *vals: Any) -> WorkflowError:
    kinds = ", ".join(type_name(v) for v in vals)
    return tagged("TypeError", f"unsupported operand type(s) for {op}: {kinds}")


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+":
        if isinstance(a, str) and isinstance(b, str):
            return a + b
        if isinstance(a, bytes) and isinstance(b, bytes):
            return a + b
    if not (is_number(a) and is_number(b)):
        raise _type_error(op, a, b)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 and op in ("/", "%", "//"):
        raise tagged("ZeroDivisionError", "division by zero")
    if op == "/":
        return float(a) / float(b)
    if op == "//":
        q = a // b
        return int(q) if isinstance(a, int) and isinstance(b, int) else float(math.floor(q))
    # %: the remainder has the sign of the dividend (truncated division), as in C and Java.
    if isinstance(a, int) and isinstance(b, int):
        r = abs(a) % abs(b)
        return -r if a < 0 else r
    return math.fmod(a, b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return equal(a, b)
    if op == "!=":
        return not equal(a, b)
    if not ((is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise _type_error(op, a, b)
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, list):
        return any(equal(item, x) for x in container)
    if isinstance(container, dict):
        if not isinstance(item, str):
            raise tagged("TypeError", f"map keys are strings; 'in' got a {type_name(item)}")
        return item in container
    raise _type_error("in", item, container)


def _bool(v: Any, op: str) -> bool:
    if not isinstance(v, bool):
        raise tagged("TypeError", f"'{op}' wants booleans, got {type_name(v)}")
    return v


# --- evaluation -------------------------------------------------------------------------------

def _chain(node: Node) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"] when the node is only names and fields."""
    parts: list[str] = []
    while node[0] == "attr":
        parts.append(node[2])
        node = node[1]
    if node[0] != "name":
        return None
    parts.append(node[1])
    return parts[::-1]


def _field(obj: Any, key: Any) -> Any:
    if isinstance(obj, dict):
        if not isinstance(key, str):
            raise tagged("TypeError", f"map keys are strings, got {type_name(key)}")
        if key not in obj:
            raise tagged("KeyError", f"key not found: {key}")
        return obj[key]
    if isinstance(obj, list):
        if not isinstance(key, int) or isinstance(key, bool):
            raise tagged("TypeError", f"list indices are integers, got {type_name(key)}")
        if not 0 <= key < len(obj):
            raise tagged("IndexError", f"list index out of range: {key} (length {len(obj)})")
        return obj[key]
    raise tagged("TypeError", f"cannot read {key!r} of a {type_name(obj)}")


def _resolve_chain(parts: list[str], ctx: Context) -> Any:
    if ctx.has_variable(parts[0]):
        value = ctx.variable(parts[0])
        for p in parts[1:]:
            value = _field(value, p)
        return value
    # Not a variable: the longest prefix that names a global symbol (http.default_retry, …).
    for k in range(len(parts), 0, -1):
        try:
            value = ctx.symbol(".".join(parts[:k]))
        except LookupError:
            continue
        for p in parts[k:]:
            value = _field(value, p)
        return value
    raise tagged("KeyError", f"variable not defined: {parts[0]}")


def evaluate(node: Node, ctx: Context) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "list":
        return [evaluate(n, ctx) for n in node[1]]
    if kind == "map":
        out: dict[str, Any] = {}
        for knode, vnode in node[1]:
            key = evaluate(knode, ctx)
            if not isinstance(key, str):
                raise tagged("TypeError", f"map keys are strings, got {type_name(key)}")
            out[key] = evaluate(vnode, ctx)
        return out
    if kind in ("name", "attr"):
        parts = _chain(node)
        if parts is not None:
            return _resolve_chain(parts, ctx)
        return _field(evaluate(node[1], ctx), node[2])
    if kind == "index":
        return _field(evaluate(node[1], ctx), evaluate(node[2], ctx))
    if kind == "call":
        callee = node[1]
        parts = _chain(callee)
        if parts == ["if"] and not ctx.has_variable("if"):
            # if(condition, a, b) evaluates only the branch it picks.
            if len(node[2]) != 3:
                raise tagged("TypeError", f"if takes 3 arguments, got {len(node[2])}")
            cond = evaluate(node[2][0], ctx)
            if not isinstance(cond, bool):
                raise tagged("TypeError", f"if: the condition must be a boolean, got {type_name(cond)}")
            return evaluate(node[2][1] if cond else node[2][2], ctx)
        args = [evaluate(a, ctx) for a in node[2]]
        if parts is not None and not ctx.has_variable(parts[0]):
            return ctx.call_function(".".join(parts), args)
        fn = evaluate(callee, ctx)
        if not isinstance(fn, FunctionRef):
            raise tagged("TypeError", f"a {type_name(fn)} is not callable")
        return ctx.call_function(fn, args)
    if kind == "unary":
        v = evaluate(node[2], ctx)
        if node[1] == "not":
            return not _bool(v, "not")
        if not is_number(v):
            raise _type_error("unary -", v)
        return -v
    op = node[1]
    if op == "and":
        return _bool(evaluate(node[2], ctx), op) and _bool(evaluate(node[3], ctx), op)
    if op == "or":
        return _bool(evaluate(node[2], ctx), op) or _bool(evaluate(node[3], ctx), op)
    a, b = evaluate(node[2], ctx), evaluate(node[3], ctx)
    if op in ("+", "-", "*", "/", "%", "//"):
        return _arith(op, a, b)
    if op == "in":
        return _contains(a, b)
    return _compare(op, a, b)


def names_called(node: Node) -> list[str]:
    """Qualified names called anywhere in `node` (for deploy-time checks)."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if n[0] == "call":
            parts = _chain(n[1])
            if parts is not None:
                out.append(".".join(parts))
            else:
                walk(n[1])
            for a in n[2]:
                walk(a)
        elif n[0] in ("attr",):
            walk(n[1])
        elif n[0] == "index":
            walk(n[1])
            walk(n[2])
        elif n[0] == "unary":
            walk(n[2])
        elif n[0] == "list":
            for x in n[1]:
                walk(x)
        elif n[0] == "map":
            for k, v in n[1]:
                walk(k)
                walk(v)
        elif n[0] == "binary":
            walk(n[2])
            walk(n[3])

    walk(node)
    return out


def render(template: Any, ctx: Context, eval_fn: Callable[[Node, Context], Any] = evaluate) -> Any:
    """Evaluate every `${…}` in a YAML value (maps and lists recursively); the rest is literal."""
    if is_expression(template):
        return eval_fn(parse_value(template), ctx)
    if isinstance(template, dict):
        out = {}
        for k, v in template.items():
            key = render(k, ctx, eval_fn) if is_expression(k) else k
            if not isinstance(key, str):
                raise tagged("TypeError", f"map keys are strings, got {type_name(key)}")
            out[key] = render(v, ctx, eval_fn)
        return out
    if isinstance(template, list):
        return [render(v, ctx, eval_fn) for v in template]
    return template
