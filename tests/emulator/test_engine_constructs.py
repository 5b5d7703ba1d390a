"""Conformance of the local Workflows engine, one construct at a time, through real executions."""

from __future__ import annotations

import time
from typing import Any

import pytest
from wfcheck import error_payload, result

from emulator.workflows.errors import DefinitionError
from emulator.workflows.executions import WorkflowsEngine

# --- steps, next, end -----------------------------------------------------------------------


def test_steps_run_in_order_and_next_jumps_back_and_forth(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - init:
        assign:
          - i: 0
          - trail: ""
    - loop:
        assign:
          - i: ${i + 1}
          - trail: ${trail + string(i)}
    - again:
        switch:
          - condition: ${i < 3}
            next: loop
        next: skip_me_not
    - skipped:
        assign:
          - trail: "never"
    - skip_me_not:
        next: finish
    - also_skipped:
        raise: "never"
    - finish:
        return: ${trail}
""")
    assert result(ex) == "123"


def test_next_end_stops_with_null_and_a_missing_return_is_null(run_workflow: Any) -> None:
    assert result(run_workflow("""
- a:
    next: end
- b:
    return: "never"
""")) is None
    assert result(run_workflow("- a:\n    assign:\n      - x: 1\n")) is None


def test_nested_steps_block_and_jump_out_of_it(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - group:
        steps:
          - inner:
              assign:
                - x: 1
          - out:
              next: done
          - unreachable:
              raise: "never"
    - skipped:
        raise: "never"
    - done:
        return: ${x}
""")
    assert result(ex) == 1


@pytest.mark.parametrize(("body", "message"), [
    ("- a:\n    next: nowhere\n", "nowhere"),
    ("- a:\n    next: break\n", "outside a for loop"),
    ("- a:\n    next: b\n- g:\n    steps:\n      - b:\n          return: 1\n", "'b'"),
    ("- a:\n    assign:\n      - x: 1\n- a:\n    return: 1\n", "used twice"),
    ("- a:\n    parallel:\n      branches: []\n", "parallel"),
    ("- a:\n    unknown_key: 1\n", "a step needs"),
    ("- a:\n    call: no.such.function\n", "no.such.function"),
    ("- a:\n    return: ${http.get(\"http://x\")}\n", "blocking"),
    ("- a:\n    return: ${sys.log(\"x\")}\n", "blocking"),
    ("- a:\n    assign: []\n", "assign"),
    ("- a:\n    assign:\n" + "".join(f"      - v{i}: {i}\n" for i in range(51)), "at most 50"),
    ("main:\n  params: [a, b]\n  steps:\n    - x:\n        return: 1\n", "at most one parameter"),
    ("- a:\n    return: ${" + " + ".join(["1"] * 200) + "}\n", "longer than 400"),
    ("- a:\n    try:\n      assign:\n        - x: 1\n    except:\n      steps:\n        - b:\n            return: 1\n",
     "a call or `steps`"),
    # Google documents `next`, `steps` and `return` in a switch condition; other actions go in a
    # nested step.
    ("- a:\n    switch:\n      - condition: true\n        raise: \"no\"\n", "next, steps or return"),
    ("- a:\n    switch:\n      - condition: true\n        assign:\n          - x: 1\n", "next, steps or return"),
    ("- a:\n    switch:\n      - condition: true\n        call: sys.log\n        args: {data: 1}\n",
     "next, steps or return"),
])
def test_bad_definitions_are_refused_at_deploy(engine: WorkflowsEngine, body: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        engine.deploy("bad", body)


def test_reserved_environment_variable_names_are_refused(engine: WorkflowsEngine) -> None:
    for name in ("GOOGLE_CLOUD_PROJECT", "WORKFLOWS_X", ""):
        with pytest.raises(DefinitionError):
            engine.deploy("envs", "- a:\n    return: 1\n", {name: "x"})


# --- assign ---------------------------------------------------------------------------------


def test_assign_paths_create_maps_and_write_list_items(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - a:
        assign:
          - m: {}
          - m.x.y: 1
          - key: "dyn"
          - m[key]: 2
          - m["lit"]: 3
          - lst: [0, 0, [0]]
          - lst[1]: 5
          - lst[2][0]: ${m.x.y + 1}
          - later: ${m.dyn * 10}
          - dyn_keys:
              ${"k_" + key}: "v"
    - r:
        return:
          m: ${m}
          lst: ${lst}
          later: ${later}
          dyn_keys: ${dyn_keys}
""")
    assert result(ex) == {"m": {"x": {"y": 1}, "dyn": 2, "lit": 3}, "lst": [0, 5, [2]], "later": 20,
                          "dyn_keys": {"k_dyn": "v"}}


def test_assigned_values_are_copies(run_workflow: Any) -> None:
    ex = run_workflow("""
- a:
    assign:
      - src: {"k": [1]}
      - copy: ${src}
      - src.k: [2]
      - src.extra: true
- r:
    return: ${copy}
""")
    assert result(ex) == {"k": [1]}


@pytest.mark.parametrize(("assignment", "tag"), [
    ("- undefined_root.x: 1", "KeyError"),
    ("- lst[5]: 1", "IndexError"),
    ("- s.x: 1", "TypeError"),
])
def test_bad_assignments_raise(run_workflow: Any, assignment: str, tag: str) -> None:
    ex = run_workflow(f"""
- a:
    assign:
      - lst: [1]
      - s: "text"
      {assignment}
""")
    assert tag in error_payload(ex)["tags"]


# --- call: subworkflows -----------------------------------------------------------------------


def test_subworkflow_params_defaults_scope_and_return(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  params: [args]
  steps:
    - outer:
        assign:
          - secret: "main only"
    - c1:
        call: greet
        args:
          name: ${args.who}
        result: r1
    - c2:
        call: greet
        args:
          name: "B"
          greeting: "Hi"
        result: r2
    - r:
        return: ${[r1, r2, add(2, 3)]}
greet:
  params: [name, greeting: "Hello"]
  steps:
    - peek:
        try:
          steps:
            - read_it:
                assign:
                  - seen: ${secret}
        except:
          steps:
            - not_visible:
                assign:
                  - seen: "no"
    - r:
        return: ${greeting + " " + name + " " + seen}
add:
  params: [a, b]
  steps:
    - r:
        return: ${a + b}
""", {"who": "A"})
    assert result(ex) == ["Hello A no", "Hi B no", 5]


def test_subworkflow_call_arguments_are_checked_at_deploy(engine: WorkflowsEngine) -> None:
    src = """
main:
  steps:
    - c:
        call: sub
        args:
          {args}
sub:
  params: [x]
  steps:
    - r:
        return: ${{x}}
"""
    with pytest.raises(DefinitionError, match="missing"):
        engine.deploy("w1", src.format(args="{}"))
    with pytest.raises(DefinitionError, match="unknown"):
        engine.deploy("w2", src.format(args="{x: 1, y: 2}"))


def test_runaway_recursion_is_a_recursion_error(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - c:
        call: down
        args: {n: 0}
down:
  params: [n]
  steps:
    - c:
        call: down
        args:
          n: ${n + 1}
""")
    assert "RecursionError" in error_payload(ex)["tags"]


def test_library_functions_as_call_steps(run_workflow: Any) -> None:
    ex = run_workflow("""
- enc:
    call: json.encode_to_string
    args:
      data: {"a": 1}
    result: s
- dec:
    call: json.decode
    args:
      data: ${s}
    result: back
- r:
    return: ${back}
""")
    assert result(ex) == {"a": 1}


# --- switch ---------------------------------------------------------------------------------


def test_switch_first_true_branch_wins_and_falls_through(run_workflow: Any) -> None:
    src = """
main:
  params: [x]
  steps:
    - init:
        assign:
          - path: ""
    - s:
        switch:
          - condition: ${x > 10}
            steps:
              - big:
                  assign:
                    - path: "big"
          - condition: ${x > 5}
            steps:
              - nested:
                  assign:
                    - path: "medium"
          - condition: ${x == 0}
            return: "zero"
          - condition: ${x < 0}
            steps:
              - negative:
                  raise: "negative"
        next: none_matched
    - after_switch:
        return: ${path}
    - none_matched:
        return: "none"
"""
    assert result(run_workflow(src, 20)) == "big"
    assert result(run_workflow(src, 7)) == "medium"
    assert result(run_workflow(src, 0)) == "zero"
    assert error_payload(run_workflow(src, -1)) == "negative"
    assert result(run_workflow(src, 3)) == "none"


def test_switch_condition_must_be_boolean(run_workflow: Any) -> None:
    ex = run_workflow("""
- s:
    switch:
      - condition: ${1}
        next: end
""")
    assert "TypeError" in error_payload(ex)["tags"]


# --- for --------------------------------------------------------------------------------------


def test_for_in_list_map_and_range_with_index(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - init:
        assign:
          - out: []
          - m: {"a": 1, "b": 2}
    - over_list:
        for:
          value: v
          index: i
          in: ["x", "y"]
          steps:
            - add:
                assign:
                  - out: ${list.concat(out, string(i) + v)}
    - over_map_keys:
        for:
          value: k
          in: ${m}
          steps:
            - add_key:
                assign:
                  - out: ${list.concat(out, k)}
    - over_range:
        for:
          value: n
          range: [1, 3]
          steps:
            - add_number:
                assign:
                  - out: ${list.concat(out, n)}
    - r:
        return: ${out}
""")
    assert result(ex) == ["0x", "1y", "a", "b", 1, 2, 3]


def test_for_break_continue_and_end(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - init:
        assign:
          - seen: []
    - loop:
        for:
          value: n
          range: [1, 10]
          steps:
            - skip_even:
                switch:
                  - condition: ${n % 2 == 0}
                    next: continue
            - stop:
                switch:
                  - condition: ${n > 6}
                    next: break
            - add:
                assign:
                  - seen: ${list.concat(seen, n)}
    - r:
        return: ${seen}
""")
    assert result(ex) == [1, 3, 5]


def test_for_scope_loop_variables_stay_inside_outer_updates_persist(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - init:
        assign:
          - total: 0
    - loop:
        for:
          value: v
          in: [1, 2, 3]
          steps:
            - body:
                assign:
                  - total: ${total + v}
                  - inner_only: ${v}
    - check:
        try:
          steps:
            - read_it:
                assign:
                  - leaked: ${inner_only}
        except:
          as: e
          steps:
            - r:
                return: ${[total, e.tags]}
""")
    assert result(ex) == [6, ["KeyError"]]


def test_jumping_out_of_a_for_body_is_refused(engine: WorkflowsEngine) -> None:
    with pytest.raises(DefinitionError, match=r"cannot jump|not a step"):
        engine.deploy("jump", """
- loop:
    for:
      value: v
      in: [1]
      steps:
        - out:
            next: after
- after:
    return: 1
""")


# --- raise, try/except ------------------------------------------------------------------------


def test_raise_map_and_string_and_catch_with_as(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - t1:
        try:
          steps:
            - raise_map:
                raise:
                  code: 7
                  message: "custom"
        except:
          as: e
          steps:
            - keep:
                assign:
                  - first: ${e}
    - t2:
        try:
          steps:
            - raise_plain:
                raise: "plain"
        except:
          as: e
          steps:
            - keep_second:
                assign:
                  - second: ${e}
    - t3:
        try:
          steps:
            - read_undefined:
                assign:
                  - x: ${undefined_var}
        except:
          as: e
          steps:
            - keep_third:
                assign:
                  - third: ${e.tags}
    - r:
        return: ${[first, second, third]}
""")
    assert result(ex) == [{"code": 7, "message": "custom"}, "plain", ["KeyError"]]


def test_uncaught_error_fails_the_execution_with_payload_and_stack(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - go:
        call: inner
inner:
  steps:
    - boom:
        raise:
          code: "E1"
          message: "bad thing"
""")
    assert error_payload(ex) == {"code": "E1", "message": "bad thing"}
    assert ex.error is not None
    steps = [(e["routine"], e["step"]) for e in ex.error["stackTrace"]["elements"]]
    assert steps[0] == ("inner", "boom") and ("main", "go") in steps
    assert "boom" in ex.error["context"]


# --- retry ------------------------------------------------------------------------------------


def test_retry_with_http_default_retry_until_success(run_workflow: Any, http_server: Any) -> None:
    http_server.answer("/flaky", (503, {"e": 1}), (503, {"e": 2}), (200, {"ok": "finally"}))
    ex = run_workflow("""
main:
  params: [url]
  steps:
    - get:
        try:
          call: http.get
          args:
            url: ${url}
          result: r
        retry:
          predicate: ${http.default_retry_predicate}
          max_retries: 5
          backoff:
            initial_delay: 0.05
            max_delay: 1
            multiplier: 2
    - out:
        return: ${r.body}
""", http_server.url + "/flaky")
    assert result(ex) == {"ok": "finally"}
    assert len(http_server.calls("GET", "/flaky")) == 3


def test_retry_expression_policy_and_non_retryable_errors(run_workflow: Any, http_server: Any) -> None:
    http_server.answer("/missing", (404, {"error": "nope"}))
    ex = run_workflow("""
main:
  params: [url]
  steps:
    - get:
        try:
          call: http.get
          args:
            url: ${url}
        retry: ${http.default_retry}
        except:
          as: e
          steps:
            - r:
                return: ${[e.code, e.tags, e.body]}
""", http_server.url + "/missing")
    assert result(ex) == [404, ["HttpError"], {"error": "nope"}]
    assert len(http_server.calls("GET", "/missing")) == 1  # 404 is not retried


def test_retry_custom_predicate_backoff_and_exhaustion(run_workflow: Any) -> None:
    t0 = time.monotonic()
    ex = run_workflow("""
main:
  steps:
    - init:
        assign:
          - attempts: 0
    - work:
        try:
          steps:
            - count:
                assign:
                  - attempts: ${attempts + 1}
            - fail:
                raise:
                  code: "TRANSIENT"
                  attempt: ${attempts}
        retry:
          predicate: ${only_transient}
          max_retries: 3
          backoff:
            initial_delay: 0.1
            max_delay: 0.25
            multiplier: 2
        except:
          as: e
          steps:
            - r:
                return: ${[attempts, e.attempt]}
only_transient:
  params: [e]
  steps:
    - check:
        return: ${e.code == "TRANSIENT"}
""")
    elapsed = time.monotonic() - t0
    assert result(ex) == [4, 4]  # the first try and 3 retries; except sees the last error
    assert elapsed >= 0.1 + 0.2 + 0.25  # delays: 0.1, 0.2, then capped at 0.25


def test_retry_predicate_false_goes_straight_to_except(run_workflow: Any) -> None:
    ex = run_workflow("""
main:
  steps:
    - init:
        assign:
          - n: 0
    - work:
        try:
          steps:
            - count:
                assign:
                  - n: ${n + 1}
            - fail:
                raise: "permanent"
        retry:
          predicate: ${never}
          max_retries: 5
        except:
          steps:
            - r:
                return: ${n}
never:
  params: [e]
  steps:
    - r:
        return: false
""")
    assert result(ex) == 1


# --- http.* -----------------------------------------------------------------------------------


def test_http_calls_send_and_parse_like_workflows(run_workflow: Any, http_server: Any) -> None:
    http_server.answer("/put", (200, {"echo": True}))
    http_server.answer("/bytes", (200, b"\x00\x01raw"))
    ex = run_workflow("""
main:
  params: [base]
  steps:
    - put:
        call: http.put
        args:
          url: ${base + "/put"}
          auth:
            type: OIDC
          headers:
            X-Test: "yes"
          query:
            a: 1
            flag: true
          body:
            state: "RUNNING"
            n: 2
        result: r1
    - req:
        call: http.request
        args:
          method: DELETE
          url: ${base + "/put"}
        result: r2
    - raw:
        call: http.get
        args:
          url: ${base + "/bytes"}
        result: r3
    - out:
        return: ${[r1.code, r1.body, r2.code, get_type(r3.body), len(r3.body)]}
""", http_server.url)
    assert result(ex) == [200, {"echo": True}, 200, "bytes", 5]
    put = http_server.calls("PUT", "/put")[0]
    assert put.body == {"state": "RUNNING", "n": 2}
    assert put.headers["Content-Type"] == "application/json" and put.headers["X-Test"] == "yes"
    assert "a=1" in put.path and "flag=true" in put.path
    assert http_server.calls("DELETE", "/put")


def test_http_connection_failures_and_timeouts_are_tagged(run_workflow: Any, http_server: Any) -> None:
    from emulator.processes import free_port

    http_server.delay["/slow"] = 2.0
    ex = run_workflow("""
main:
  params: [urls]
  steps:
    - init:
        assign:
          - tags: []
    - each:
        for:
          value: u
          in: ${urls}
          steps:
            - call_it:
                try:
                  call: http.get
                  args:
                    url: ${u}
                    timeout: 0.5
                except:
                  as: e
                  steps:
                    - keep:
                        assign:
                          - tags: ${list.concat(tags, e.tags[0])}
    - r:
        return: ${tags}
""", [f"http://127.0.0.1:{free_port()}/refused", http_server.url + "/slow"])
    assert result(ex) == ["ConnectionFailedError", "TimeoutError"]


def test_http_bad_arguments_raise(run_workflow: Any) -> None:
    ex = run_workflow("""
- c:
    call: http.get
    args:
      url: "ftp://example"
""")
    assert "ValueError" in error_payload(ex)["tags"]
    ex = run_workflow("""
- c:
    call: http.get
    args:
      url: "http://127.0.0.1:1/"
      auth:
        type: Basic
""")
    assert "ValueError" in error_payload(ex)["tags"]


# --- sys.* ------------------------------------------------------------------------------------


def test_sys_log_and_sleep(run_workflow: Any) -> None:
    t0 = time.monotonic()
    ex = run_workflow("""
- l1:
    call: sys.log
    args:
      text: "hello"
      severity: "WARNING"
- l2:
    call: sys.log
    args:
      json: {"k": 1}
- s:
    call: sys.sleep
    args:
      seconds: 0.3
- r:
    return: ${sys.now()}
""")
    assert time.monotonic() - t0 >= 0.3
    assert isinstance(result(ex), float)
    assert [(x["severity"], x["payload"]) for x in ex.rt.logs] == [("WARNING", "hello"), ("DEFAULT", {"k": 1})]


def test_cancel_stops_a_sleeping_execution(run_workflow: Any, engine: WorkflowsEngine) -> None:
    ex = run_workflow("""
- s:
    call: sys.sleep
    args:
      seconds: 60
- never:
    return: "finished"
""", wait=False)
    time.sleep(0.2)
    assert ex.state == "ACTIVE" and ex.rt.current[-1][1] == "s"
    t0 = time.monotonic()
    engine.cancel(ex.name)
    assert ex.state == "CANCELLED" and time.monotonic() - t0 < 5
    assert ex.result is None


# --- executions -------------------------------------------------------------------------------


def test_execution_argument_and_result_are_json(run_workflow: Any, engine: WorkflowsEngine) -> None:
    from emulator.workflows.executions import ApiError

    ex = run_workflow("main:\n  params: [a]\n  steps:\n    - r:\n        return: ${a}\n", {"x": [1, "two", None]})
    assert result(ex) == {"x": [1, "two", None]}
    doc = ex.to_json()
    assert doc["state"] == "SUCCEEDED" and doc["argument"] and doc["endTime"] and doc["duration"].endswith("s")
    with pytest.raises(ApiError) as bad:
        engine.create_execution(ex.workflow.workflow_id, "{not json")
    assert bad.value.code == 400
    with pytest.raises(ApiError) as missing:
        engine.create_execution("no-such-workflow", "{}")
    assert missing.value.code == 404
