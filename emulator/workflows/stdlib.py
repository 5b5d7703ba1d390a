"""The Workflows standard library the local engine provides (expression helpers and modules).

Each function has the parameter names of the documentation, so it can be called from an
expression (positional) or from a `call:` step (named `args`). Functions marked `blocking`
(`sys.sleep`, `sys.log`) are refused inside expressions, as on Google Cloud.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from emulator.workflows.errors import WorkflowError, tagged
from emulator.workflows.expressions import FunctionRef, equal, is_number, type_name

_MISSING = object()


class Runtime(Protocol):
    """What the library needs from the running execution."""

    env: Mapping[str, str]

    def log(self, severity: str, payload: Any) -> None: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Function:
    name: str
    params: tuple[str, ...]
    required: int
    impl: Callable[..., Any]  # impl(rt, *args)
    blocking: bool = False

    def bind(self, args: list[Any] | None = None, named: Mapping[str, Any] | None = None) -> list[Any]:
        """Positional arguments from a call: `args` (expression) or `named` (call step)."""
        if named is not None:
            unknown = set(named) - set(self.params)
            if unknown:
                raise tagged("TypeError", f"{self.name}: unknown argument(s) {', '.join(sorted(unknown))}")
            bound = [named.get(p, _MISSING) for p in self.params]
            while bound and bound[-1] is _MISSING:
                bound.pop()
            if _MISSING in bound[: self.required] or len(bound) < self.required:
                missing = [p for p, v in zip(self.params, bound + [_MISSING] * len(self.params), strict=False)
                           if v is _MISSING][:1]
                raise tagged("TypeError", f"{self.name}: missing argument {missing[0] if missing else ''}")
            return [None if v is _MISSING else v for v in bound]
        args = list(args or [])
        if not self.required <= len(args) <= len(self.params):
            raise tagged("TypeError", f"{self.name} takes {self.required}..{len(self.params)} arguments, "
                                      f"got {len(args)}")
        return args


# --- helpers ----------------------------------------------------------------------------------

def _want(name: str, v: Any, *kinds: str) -> None:
    if type_name(v) not in kinds:
        raise tagged("TypeError", f"{name}: expected {' or '.join(kinds)}, got {type_name(v)}")


def _default(rt: Runtime, val: Any, default_val: Any) -> Any:
    return default_val if val is None else val


def _keys(rt: Runtime, m: Any) -> list[str]:
    _want("keys", m, "map")
    return list(m.keys())


def _len(rt: Runtime, v: Any) -> int:
    _want("len", v, "string", "bytes", "list", "map")
    return len(v)


def _int(rt: Runtime, v: Any) -> int:
    if isinstance(v, bool) or v is None:
        raise tagged("TypeError", f"int: cannot convert {type_name(v)}")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise tagged("ValueError", f"int: cannot convert {v}")
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise tagged("ValueError", f"int: not an integer: {v!r}") from None
    raise tagged("TypeError", f"int: cannot convert {type_name(v)}")


def _double(rt: Runtime, v: Any) -> float:
    if is_number(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise tagged("ValueError", f"double: not a number: {v!r}") from None
    raise tagged("TypeError", f"double: cannot convert {type_name(v)}")


def _string(rt: Runtime, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if not v.is_integer() or abs(v) >= 1e16 else f"{v:.1f}"
    raise tagged("TypeError", f"string: cannot convert {type_name(v)}")


def _get_type(rt: Runtime, v: Any) -> str:
    return type_name(v)


# --- map and list -----------------------------------------------------------------------------

def _map_get(rt: Runtime, m: Any, keys: Any) -> Any:
    path = keys if isinstance(keys, list) else [keys]
    for k in path:
        _want("map.get key", k, "string")
    if not isinstance(m, dict):
        return None
    cur = m
    for k in path:
        _want("map.get key", k, "string")
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def _map_merge(rt: Runtime, first: Any, second: Any) -> dict:
    _want("map.merge", first, "map")
    _want("map.merge", second, "map")
    return {**copy.deepcopy(first), **copy.deepcopy(second)}


def _merge_nested(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge_nested(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def _map_merge_nested(rt: Runtime, first: Any, second: Any) -> dict:
    _want("map.merge_nested", first, "map")
    _want("map.merge_nested", second, "map")
    return _merge_nested(first, second)


def _map_delete(rt: Runtime, m: Any, key: Any) -> dict:
    _want("map.delete", m, "map")
    return {k: copy.deepcopy(v) for k, v in m.items() if k != key}


def _list_concat(rt: Runtime, objs: Any, val: Any) -> list:
    _want("list.concat", objs, "list")
    return [*copy.deepcopy(objs), copy.deepcopy(val)]


def _list_prepend(rt: Runtime, objs: Any, val: Any) -> list:
    _want("list.prepend", objs, "list")
    return [copy.deepcopy(val), *copy.deepcopy(objs)]


# --- json, text, base64 -----------------------------------------------------------------------

def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        raise tagged("TypeError", "json.encode: bytes are not JSON; use base64.encode or text.decode")
    if isinstance(v, FunctionRef):
        raise tagged("TypeError", "json.encode: a function is not JSON")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _json_text(v: Any, indent: Any = None) -> str:
    if indent is not None and indent is not False:
        if indent is True:
            indent = 2
        if isinstance(indent, dict):
            indent = int(indent.get("prefix_count", 2)) if "prefix_count" in indent else 2
        return json.dumps(_jsonable(v), ensure_ascii=False, indent=int(indent))
    return json.dumps(_jsonable(v), ensure_ascii=False, separators=(",", ":"))


def _json_encode(rt: Runtime, data: Any, indent: Any = None) -> bytes:
    return _json_text(data, indent).encode()


def _json_encode_to_string(rt: Runtime, data: Any, indent: Any = None) -> str:
    return _json_text(data, indent)


def _json_decode(rt: Runtime, data: Any) -> Any:
    _want("json.decode", data, "bytes", "string")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise tagged("ValueError", f"json.decode: not valid JSON: {exc}") from None


def _text_encode(rt: Runtime, text: Any, charset: Any = "UTF-8") -> bytes:
    _want("text.encode", text, "string")
    return text.encode(str(charset or "UTF-8"))


def _text_decode(rt: Runtime, data: Any, charset: Any = "UTF-8") -> str:
    _want("text.decode", data, "bytes")
    try:
        return data.decode(str(charset or "UTF-8"))
    except UnicodeDecodeError as exc:
        raise tagged("ValueError", f"text.decode: {exc}") from None


def _s(name: str, v: Any) -> str:
    _want(name, v, "string")
    return v


def _regex(name: str, pattern: Any) -> re.Pattern[str]:
    try:
        return re.compile(_s(name, pattern))
    except re.error as exc:
        raise tagged("ValueError", f"{name}: invalid regular expression: {exc}") from None


def _substring(rt: Runtime, source: Any, start: Any, end: Any) -> str:
    s = _s("text.substring", source)
    for v in (start, end):
        _want("text.substring", v, "integer")
    start, end = max(0, start), min(len(s), end)
    return s[start:end] if start < end else ""


def _split(rt: Runtime, source: Any, separator: Any) -> list[str]:
    s, sep = _s("text.split", source), _s("text.split", separator)
    if sep == "":
        return list(s)
    return s.split(sep)


def _find_all(rt: Runtime, source: Any, substr: Any) -> list[dict]:
    s, sub = _s("text.find_all", source), _s("text.find_all", substr)
    out, i = [], s.find(sub) if sub else -1
    while i >= 0:
        out.append({"index": i, "match": sub})
        i = s.find(sub, i + max(1, len(sub)))
    return out


def _find_all_regex(rt: Runtime, source: Any, regex: Any) -> list[dict]:
    return [{"index": m.start(), "match": m.group()}
            for m in _regex("text.find_all_regex", regex).finditer(_s("text.find_all_regex", source))]


def _replace_all(rt: Runtime, source: Any, substr: Any, value: Any) -> str:
    return _s("text.replace_all", source).replace(_s("text.replace_all", substr), _s("text.replace_all", value))


def _replace_all_regex(rt: Runtime, source: Any, regex: Any, replacement: Any) -> str:
    return _regex("text.replace_all_regex", regex).sub(_s("text.replace_all_regex", replacement),
                                                       _s("text.replace_all_regex", source))


def _match_regex(rt: Runtime, source: Any, regex: Any) -> bool:
    return _regex("text.match_regex", regex).search(_s("text.match_regex", source)) is not None


def _b64_encode(rt: Runtime, data: Any, padding: Any = True) -> str:
    _want("base64.encode", data, "bytes")
    out = base64.b64encode(data).decode()
    return out if padding is not False else out.rstrip("=")


def _b64_decode(rt: Runtime, data: Any, padding: Any = True) -> bytes:
    s = _s("base64.decode", data)
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4))
    except ValueError as exc:
        raise tagged("ValueError", f"base64.decode: {exc}") from None


# --- math, time, sys, uuid --------------------------------------------------------------------

def _num(name: str, v: Any) -> Any:
    if not is_number(v):
        raise tagged("TypeError", f"{name}: expected a number, got {type_name(v)}")
    return v


def _time_format(rt: Runtime, seconds: Any, timezone: Any = None) -> str:
    _num("time.format", seconds)
    stamp = dt.datetime.fromtimestamp(float(seconds), dt.UTC)
    if timezone not in (None, "UTC", "Z"):
        try:
            from zoneinfo import ZoneInfo

            stamp = stamp.astimezone(ZoneInfo(str(timezone)))
        except Exception:
            raise tagged("ValueError", f"time.format: unknown time zone {timezone!r}") from None
        return stamp.isoformat()
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_parse(rt: Runtime, value: Any) -> float:
    s = _s("time.parse", value)
    try:
        stamp = dt.datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError:
        raise tagged("ValueError", f"time.parse: not an ISO 8601 timestamp: {s!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _get_env(rt: Runtime, name: Any, default: Any = None) -> Any:
    return rt.env.get(_s("sys.get_env", name), default)


def _now(rt: Runtime) -> float:
    return time.time()


_SEVERITIES = {"DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"}


def _log(rt: Runtime, data: Any = None, severity: Any = None, text: Any = None, json: Any = None,
         timeout: Any = None) -> None:
    given = [v for v in (data, text, json) if v is not None]
    if len(given) != 1:
        raise tagged("TypeError", "sys.log: give exactly one of data, text, json")
    sev = str(severity or "DEFAULT").upper()
    if sev not in _SEVERITIES:
        raise tagged("ValueError", f"sys.log: unknown severity {severity!r}")
    rt.log(sev, given[0])


def _sleep(rt: Runtime, seconds: Any) -> None:
    _num("sys.sleep", seconds)
    if seconds < 0:
        raise tagged("ValueError", "sys.sleep: seconds must be >= 0")
    rt.sleep(float(seconds))


def _uuid(rt: Runtime) -> str:
    return str(uuid.uuid4())


# --- retry policies ---------------------------------------------------------------------------

def _tags(e: Any) -> list[str]:
    return [str(t) for t in e.get("tags", [])] if isinstance(e, dict) and isinstance(e.get("tags"), list) else []


def _default_retry_predicate(rt: Runtime, e: Any) -> bool:
    tags = _tags(e)
    if {"ConnectionError", "ConnectionFailedError", "TimeoutError"} & set(tags):
        return True
    return "HttpError" in tags and isinstance(e, dict) and e.get("code") in (429, 502, 503, 504)


def _default_retry_predicate_non_idempotent(rt: Runtime, e: Any) -> bool:
    tags = _tags(e)
    if "ConnectionFailedError" in tags:
        return True
    return "HttpError" in tags and isinstance(e, dict) and e.get("code") in (429, 503)


DEFAULT_BACKOFF = {"initial_delay": 1, "max_delay": 60, "multiplier": 1.25}

CONSTANTS: dict[str, Any] = {
    "http.default_retry": {"predicate": FunctionRef("http.default_retry_predicate"), "max_retries": 5,
                           "backoff": DEFAULT_BACKOFF},
    "http.default_retry_non_idempotent": {
        "predicate": FunctionRef("http.default_retry_predicate_non_idempotent"), "max_retries": 5,
        "backoff": DEFAULT_BACKOFF},
    "retry.default_backoff": DEFAULT_BACKOFF,
}


def _fn(name: str, params: str, impl: Callable[..., Any], required: int | None = None,
        blocking: bool = False) -> Function:
    names = tuple(p for p in params.split(",") if p)
    return Function(name, names, len(names) if required is None else required, impl, blocking)


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    _fn("default", "val,default_val", _default),
    _fn("keys", "map", _keys),
    _fn("len", "value", _len),
    _fn("int", "value", _int),
    _fn("double", "value", _double),
    _fn("string", "value", _string),
    _fn("get_type", "value", _get_type),
    _fn("map.get", "map,keys", _map_get),
    _fn("map.merge", "first,second", _map_merge),
    _fn("map.merge_nested", "first,second", _map_merge_nested),
    _fn("map.delete", "map,key", _map_delete),
    _fn("list.concat", "objs,val", _list_concat),
    _fn("list.prepend", "objs,val", _list_prepend),
    _fn("json.encode", "data,indent", _json_encode, 1),
    _fn("json.encode_to_string", "data,indent", _json_encode_to_string, 1),
    _fn("json.decode", "data", _json_decode),
    _fn("text.encode", "text,charset", _text_encode, 1),
    _fn("text.decode", "data,charset", _text_decode, 1),
    _fn("text.split", "source,separator", _split),
    _fn("text.substring", "source,start,end", _substring),
    _fn("text.to_lower", "source", lambda rt, s: _s("text.to_lower", s).lower()),
    _fn("text.to_upper", "source", lambda rt, s: _s("text.to_upper", s).upper()),
    _fn("text.replace_all", "source,substr,value", _replace_all),
    _fn("text.replace_all_regex", "source,regex,replacement", _replace_all_regex),
    _fn("text.match_regex", "source,regex", _match_regex),
    _fn("text.find_all", "source,substr", _find_all),
    _fn("text.find_all_regex", "source,regex", _find_all_regex),
    _fn("text.url_encode", "source", lambda rt, s: urllib.parse.quote(_s("text.url_encode", s), safe="")),
    _fn("text.url_encode_plus", "source",
        lambda rt, s: urllib.parse.quote_plus(_s("text.url_encode_plus", s), safe="")),
    _fn("text.url_decode", "source", lambda rt, s: urllib.parse.unquote(_s("text.url_decode", s))),
    _fn("base64.encode", "data,padding", _b64_encode, 1),
    _fn("base64.decode", "data,padding", _b64_decode, 1),
    _fn("math.abs", "x", lambda rt, x: abs(_num("math.abs", x))),
    _fn("math.floor", "x", lambda rt, x: math.floor(_num("math.floor", x))),
    _fn("math.max", "x,y", lambda rt, x, y: max(_num("math.max", x), _num("math.max", y))),
    _fn("math.min", "x,y", lambda rt, x, y: min(_num("math.min", x), _num("math.min", y))),
    _fn("time.format", "seconds,timezone", _time_format, 1),
    _fn("time.parse", "value", _time_parse),
    _fn("sys.get_env", "name,default", _get_env, 1),
    _fn("sys.now", "", _now),
    _fn("sys.log", "data,severity,text,json,timeout", _log, 0, blocking=True),
    _fn("sys.sleep", "seconds", _sleep, blocking=True),
    _fn("uuid.generate", "", _uuid),
    _fn("http.default_retry_predicate", "e", _default_retry_predicate),
    _fn("http.default_retry_predicate_non_idempotent", "e", _default_retry_predicate_non_idempotent),
    _fn("retry.always", "e", lambda rt, e: True),
    _fn("retry.never", "e", lambda rt, e: False),
]}


def call(rt: Runtime, fn: Function, args: list[Any]) -> Any:
    """Run a library function; Python errors inside become Workflows error values."""
    try:
        return fn.impl(rt, *args)
    except WorkflowError:
        raise
    except RecursionError:
        raise tagged("RecursionError", f"{fn.name}: value too deeply nested") from None
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise tagged(type(exc).__name__, f"{fn.name}: {exc}") from None


__all__ = ["CONSTANTS", "DEFAULT_BACKOFF", "FUNCTIONS", "Function", "Runtime", "call", "equal"]
