"""Conformance of `${…}` expressions and the standard library, evaluated by real executions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from wfcheck import error_payload, result

from emulator.workflows import expressions as ex
from emulator.workflows.errors import DefinitionError

ARG = {"n": 7, "f": 2.5, "s": "Hello", "m": {"a": {"b": [10, {"c": "deep"}]}, "k": None}, "l": [1, 2, 3],
       "t": True, "nested_list": [[1, 2], [3]]}


def expr_workflow(expression: str) -> str:
    return f"""
main:
  params: [a]
  steps:
    - prepare:
        assign:
          - n: ${{a.n}}
          - f: ${{a.f}}
          - s: ${{a.s}}
          - m: ${{a.m}}
          - l: ${{a.l}}
          - t: ${{a.t}}
    - out:
        return: {json.dumps(expression)}
"""


def evaluate(run_workflow: Any, expression: str, env: dict[str, str] | None = None) -> Any:
    return run_workflow(expr_workflow("${" + expression + "}"), ARG, env)


@pytest.mark.parametrize(("expression", "expected"), [
    # precedence: unary > * / % // > + - > comparisons, in > and > or
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("-2 * 3 + 1", -5),
    ("10 - 2 - 3", 5),
    ("n // 2", 3),
    ("n / 2", 3.5),
    ("4 / 2", 2.0),
    ("-7 % 3", -1),
    ("7 % -3", 1),
    ("f * 2", 5.0),
    ("1 < 2 and 2 < 3 or false", True),
    ("not t or t", True),
    ("not (1 == 1)", False),
    ("1 == 1.0", True),
    ("true == 1", False),
    ("null == null", True),
    ("m.k == null", True),
    ('"a" < "b"', True),
    ('s + " " + "world"', "Hello world"),
    ("'single' + \"double\"", "singledouble"),
    ('"tab\\tquote\\"unicode\\u00e9"', 'tab\tquote"unicodeé'),
    ('m.a.b[1].c', "deep"),
    ('m["a"]["b"][0]', 10),
    ('l[len(l) - 1]', 3),
    ('2 in l', True),
    ('5 in l', False),
    ('"a" in m', True),
    ('"zz" in m', False),
    ('True and TRUE', True),
    ('if(n > 5, "big", m.no_such_key)', "big"),
    # expression helpers
    ('default(m.k, "fallback")', "fallback"),
    ('default(n, 0)', 7),
    ('len(s) + len(l) + len(m)', 10),
    ('keys(m.a)', ["b"]),
    ('int("42") + int(2.9) + int(-2.9)', 42 + 2 - 2),
    ('double("1.5") + double(1)', 2.5),
    ('string(n) + string(f) + string(t) + string(1.0)', "72.5true1.0"),
    ('get_type(n) + get_type(f) + get_type(s) + get_type(l) + get_type(m) + get_type(m.k) + get_type(t)',
     "integerdoublestringlistmapnullboolean"),
    # map, list
    ('map.get(m, "a")["b"][0]', 10),
    ('map.get(m, "nope")', None),
    ('map.get(m.k, "x")', None),
    ('map.get(l, "x")', None),
    ('[n, s, [t]]', [7, "Hello", [True]]),
    ('{"a": n, s: 1}["Hello"] + len({})', 1),
    ('len([]) + len([1])', 1),
    ('map.get(m, ["a", "b"])[0]', 10),
    ('map.get(m, ["a", "zz", "b"])', None),
    ('map.merge(m.a, m)["k"]', None),
    ('keys(map.delete(m, "a"))', ["k"]),
    ('list.concat(l, 4)', [1, 2, 3, 4]),
    ('list.prepend(l, 0)', [0, 1, 2, 3]),
    # json, text, base64
    ('json.decode(json.encode(m))["a"]["b"][0]', 10),
    ('json.encode_to_string(l)', "[1,2,3]"),
    ('json.decode("{\\"x\\": [1, 2]}")["x"][1]', 2),
    ('text.decode(text.encode(s))', "Hello"),
    ('text.split("a/b/c", "/")', ["a", "b", "c"]),
    ('text.substring("abcdef", 1, 3)', "bc"),
    ('text.substring("abc", 1, 99)', "bc"),
    ('text.to_lower(s) + text.to_upper(s)', "helloHELLO"),
    ('text.replace_all("a-b-c", "-", "+")', "a+b+c"),
    ('text.replace_all_regex("Req_ID.42", "[^a-z0-9-]", "-")', "-eq----42"),
    ('text.match_regex("exit code 50001.", "exit code 5000[1-6]")', True),
    ('text.match_regex("QUOTA exceeded", "(?i:quota)")', True),
    ('text.find_all("banana", "an")', [{"index": 1, "match": "an"}, {"index": 3, "match": "an"}]),
    ('text.find_all_regex("a1b22", "[0-9]+")', [{"index": 1, "match": "1"}, {"index": 3, "match": "22"}]),
    ('text.url_encode("jobs/a b/_ERROR.json")', "jobs%2Fa%20b%2F_ERROR.json"),
    ('text.url_decode("a%2Fb")', "a/b"),
    ('text.decode(base64.decode(base64.encode(text.encode("hi"))))', "hi"),
    ('math.abs(-3) + math.max(1, 2) + math.min(1, 2) + math.floor(2.7)', 8),
    ('time.parse(time.format(1700000000.5))', 1700000000.5),
    ('time.format(0)', "1970-01-01T00:00:00.000000Z"),
])
def test_expression_values(run_workflow: Any, expression: str, expected: Any) -> None:
    assert result(evaluate(run_workflow, expression)) == expected


@pytest.mark.parametrize(("expression", "tag"), [
    ('1 + "a"', "TypeError"),
    ('s - 1', "TypeError"),
    ('n / 0', "ZeroDivisionError"),
    ('n // 0', "ZeroDivisionError"),
    ('m.nope', "KeyError"),
    ('l[3]', "IndexError"),
    ('l["x"]', "TypeError"),
    ('no_such_variable', "KeyError"),
    ('n and true', "TypeError"),
    ('not n', "TypeError"),
    ('1 < "a"', "TypeError"),
    ('int("x1")', "ValueError"),
    ('json.decode("{not json")', "ValueError"),
    ('keys(l)', "TypeError"),
    ('map.get(m, 1)', "TypeError"),
    ('{n: 1}', "TypeError"),
    ('len(n)', "TypeError"),
    ('text.split(n, "/")', "TypeError"),
    ('string(m)', "TypeError"),
    ('json.encode(text.encode("x"))', "TypeError"),
])
def test_expression_errors_are_tagged(run_workflow: Any, expression: str, tag: str) -> None:
    payload = error_payload(evaluate(run_workflow, expression))
    assert tag in payload["tags"], payload
    assert payload["message"]


@pytest.mark.parametrize("bad", ["1 +", "a..b", "[1, 2", "{\"a\" 1}", "a ? b", "f(", "\"unterminated", "'x\\q'"])
def test_syntax_errors_refuse_the_deploy(run_workflow: Any, bad: str) -> None:
    with pytest.raises(DefinitionError):
        evaluate(run_workflow, bad)


def test_only_whole_strings_are_expressions() -> None:
    assert ex.is_expression("${a}")
    assert not ex.is_expression("prefix ${a}")
    assert not ex.is_expression("${a} suffix")


def test_sys_get_env_and_now(run_workflow: Any) -> None:
    out = result(evaluate(run_workflow, 'sys.get_env("MY_VAR") + "|" + default(sys.get_env("UNSET"), "none") + "|" '
                                        '+ sys.get_env("UNSET2", "dflt") + "|" + get_type(sys.now())',
                          env={"MY_VAR": "v1"}))
    assert out == "v1|none|dflt|double"


def test_builtin_environment_variables(run_workflow: Any) -> None:
    names = ["GOOGLE_CLOUD_PROJECT_ID", "GOOGLE_CLOUD_LOCATION", "GOOGLE_CLOUD_WORKFLOW_ID",
             "GOOGLE_CLOUD_WORKFLOW_REVISION_ID", "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID", "GOOGLE_CLOUD_PROJECT_NUMBER"]
    ex_ = evaluate(run_workflow, " + \"|\" + ".join(f'sys.get_env("{n}")' for n in names))
    values = result(ex_).split("|")
    assert values[0] == "splatpipe-local" and values[1] == "us-central1"
    assert values[4] == ex_.execution_id
    assert all(values)
