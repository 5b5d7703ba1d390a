"""terraform/monitoring.tf: every log-based metric filters on events and fields core/log_events.py
states, every alert and dashboard query names a metric Terraform defines or Google documents, the
dashboard loads into the Monitoring Dashboard proto, and the uptime check asks the api a question
its code answers the way the check expects. (The provider-schema check of every block is
test_terraform_schema.py, which covers every resource of terraform/*.tf.)"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
from google.cloud import monitoring_dashboard_v1
from google.protobuf import json_format
from tfmodel import REPO, TF_DIR, TfConfig, first

from core import log_events
from core.api import TOKEN_HEADER
from core.record import StageState, State
from functions.edge import public_api
from functions.lifecycle import access

# Google's own metrics the alerts and the dashboard may name, with the page that documents each.
GOOGLE_METRICS = {
    # https://cloud.google.com/monitoring/api/metrics_gcp_i_o#gcp-monitoring and
    # https://cloud.google.com/monitoring/charts/uptime-charts
    "monitoring.googleapis.com/uptime_check/check_passed": set(),
    # https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-run (a 2nd gen function is a
    # Cloud Run service); its metric label, and resource labels of cloud_run_revision.
    "run.googleapis.com/request_count": {"response_code_class", "service_name", "monitored_resource"},
}
DISTRIBUTION_SUFFIXES = ("_sum", "_count", "_bucket")  # https://cloud.google.com/monitoring/promql/promql-mapping
STATES = {s.value for s in State} | {s.value for s in StageState}
HISTOGRAM_LABELS = {"le"}  # the bucket bound label histogram_quantile reads

_FIELD = re.compile(r"jsonPayload\.(\w+)")
_EVENT = re.compile(r'jsonPayload\.event\s*=\s*"([^"]*)"')
_STATE = re.compile(r'\bstate\s*=\s*"([^"]*)"')
_METRIC_TYPE = re.compile(r'metric\.type\s*=\s*"(\$\{[^}]*\}|[^"]*)"')
_LOCAL_TYPE = re.compile(r'^\$\{local\.log_metric_types\["(\w+)"\]\}$')
_PROMQL_NAME = re.compile(r"\b([a-z][a-z0-9_]*:[A-Za-z0-9_]+)")
_PLACEHOLDER = re.compile(r"(?<!\$)\$\{([a-z_]+)(?:\.([a-z_]+))?\}")


def promql_name(metric_type: str) -> str:
    """The PromQL name of a Cloud Monitoring metric type (promql-mapping: first / to :, the rest _)."""
    domain, _, path = metric_type.partition("/")
    return re.sub(r"[^A-Za-z0-9_]", "_", domain) + ":" + re.sub(r"[^A-Za-z0-9_]", "_", path)


def test_terraform_names_the_metrics_as_the_promql_mapping_does(tf, tmp_path):
    # The dashboard's queries use monitoring.tf's local.log_metric_promql; Terraform itself
    # evaluates that expression for a name with characters PromQL does not allow.
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH")
    expr = tf.locals["log_metric_promql"]
    assert expr.startswith("${") and "google_logging_metric.metric" in expr
    name = "my-env/queue.stats_x"
    (tmp_path / "main.tf").write_text(
        f'locals {{\n  metrics = {{ k = {{ name = "{name}" }} }}\n'
        f'  promql = {expr[2:-1].replace("google_logging_metric.metric", "local.metrics")}\n}}\n')
    proc = subprocess.run([terraform, "console"], input="jsonencode(local.promql)", cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TF_IN_AUTOMATION": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(json.loads(proc.stdout.strip().splitlines()[-1])) == {
        "k": promql_name(f"logging.googleapis.com/user/{name}")}
    assert tf.locals["log_metric_types"] == (
        '${{for k, m in google_logging_metric.metric : k => "logging.googleapis.com/user/${m.name}"}}')


class Metrics:
    """The log-based metrics monitoring.tf defines, as deployed with the default name_prefix."""

    def __init__(self, tf: TfConfig) -> None:
        prefix = tf.variables["name_prefix"]["default"]
        self.defs: dict[str, dict[str, Any]] = tf.locals["log_metrics"]
        self.types = {k: f"logging.googleapis.com/user/{prefix}/{k}" for k in self.defs}
        self.bodies = {inst.key: inst.body for inst in tf.instances("google_logging_metric")}
        # PromQL name -> key
        self.promql = {promql_name(t): k for k, t in self.types.items()}

    def labels(self, key: str) -> set[str]:
        return set(self.defs[key]["labels"])

    def is_distribution(self, key: str) -> bool:
        return self.defs[key]["value"] is not None


@pytest.fixture(scope="module")
def metrics(tf: TfConfig) -> Metrics:
    return Metrics(tf)


# --- log filters against core/log_events.py ----------------------------------------------------


def log_filter_findings(where: str, text: str) -> list[str]:
    """What a log filter (with its extractors) names that core/log_events.py does not state: an
    unknown event, a field no event carries, or a field the selected event does not carry."""
    events = {e.value: e for e in log_events.Event}
    out = []
    selected = _EVENT.findall(text)
    for value in selected:
        if value not in events:
            out.append(f"{where}: event {value!r} is not in core.log_events.Event")
    known = {f for e in selected if e in events for f in log_events.FIELDS[events[e]]}
    every_field = {f for fields in log_events.FIELDS.values() for f in fields}
    for field in set(_FIELD.findall(text)) - {log_events.EVENT}:
        if field not in every_field:
            out.append(f"{where}: jsonPayload.{field} is no field of core.log_events")
        elif selected and field not in known:
            out.append(f"{where}: jsonPayload.{field} is not carried by {', '.join(selected)}")
    for state in _STATE.findall(text):
        if state not in STATES:
            out.append(f"{where}: state {state!r} is no request or stage state")
    return out


def test_log_filter_check_finds_unknown_names():
    assert log_filter_findings("ok", 'jsonPayload.event="stage.finished" AND EXTRACT(jsonPayload.gpu_seconds)') == []
    found = "\n".join(
        log_filter_findings("a", 'jsonPayload.event="stage.finish"')
        + log_filter_findings("b", 'jsonPayload.event="queue.stats" EXTRACT(jsonPayload.oldest_wait)')
        + log_filter_findings("c", 'jsonPayload.event="queue.stats" EXTRACT(jsonPayload.gpu_seconds)')
        + log_filter_findings("d", 'metric.label.state="DONE"'))
    assert "a: event 'stage.finish' is not in" in found
    assert "b: jsonPayload.oldest_wait is no field" in found
    assert "c: jsonPayload.gpu_seconds is not carried by queue.stats" in found
    assert "d: state 'DONE'" in found


def test_every_log_metric_selects_one_event_and_extracts_its_fields(metrics):
    assert set(metrics.bodies) == set(metrics.defs), "google_logging_metric.metric is not for_each local.log_metrics"
    for key, body in metrics.bodies.items():
        text = json.dumps(body)
        assert len(_EVENT.findall(body["filter"])) == 1, f"{key}: the filter selects not exactly one event"
        assert not log_filter_findings(key, text), log_filter_findings(key, text)
        spec = metrics.defs[key]
        for field in ([spec["value"]] if spec["value"] else []) + list(spec["labels"].values()):
            assert field.startswith("jsonPayload.") and field in text, f"{key}: {field}"


def test_thresholds_in_filters_are_the_alert_variables(metrics):
    # The exact-count metrics behind two alerts carry their threshold in the filter.
    assert "${var.alert_queue_wait_hours * 3600}" in metrics.defs["queue_wait_exceeded"]["filter"]
    assert "${var.alert_outbox_stuck_minutes * 60}" in metrics.defs["outbox_stuck"]["filter"]


# --- metric types ------------------------------------------------------------------------------


def metric_type_findings(where: str, text: str, metrics: Metrics) -> list[str]:
    out = []
    for ref in _METRIC_TYPE.findall(text):
        local = _LOCAL_TYPE.match(ref)
        if local:
            if local.group(1) not in metrics.defs:
                out.append(f"{where}: local.log_metric_types[{local.group(1)!r}] is not a log-based metric")
        elif ref not in GOOGLE_METRICS and ref not in metrics.types.values():
            out.append(f"{where}: metric type {ref!r} is neither defined here nor in GOOGLE_METRICS")
    return out


def _conditions(tf: TfConfig) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for name, policy in tf.of_type("google_monitoring_alert_policy").items():
        for cond in policy["conditions"]:
            for kind, blocks in cond.items():
                if kind.startswith("condition_"):
                    out.append((f"{name}: {cond['display_name']}", kind, blocks[0]))
    return out


def test_alert_filters_name_defined_or_documented_metrics(tf, metrics):
    conditions = _conditions(tf)
    assert {kind for _, kind, _ in conditions} == {"condition_threshold", "condition_absent"}
    for where, _, cond in conditions:
        for key in ("filter", "denominator_filter"):
            if key not in cond:
                continue
            text = cond[key]
            assert _METRIC_TYPE.search(text) and "resource.type=" in text, f"{where}: {key} names no metric or resource type"
            assert not metric_type_findings(where, text, metrics), metric_type_findings(where, text, metrics)
            assert not log_filter_findings(where, text), log_filter_findings(where, text)
            for label in re.findall(r"metric\.label\.(\w+)", text):
                local = _LOCAL_TYPE.match(_METRIC_TYPE.search(text).group(1))
                allowed = metrics.labels(local.group(1)) if local else {"check_id"}
                assert label in allowed, f"{where}: metric.label.{label} is not a label of the metric"


def test_metric_type_check_finds_unknown_metrics(metrics):
    found = "\n".join(metric_type_findings("x", 'metric.type="${local.log_metric_types["nope"]}"', metrics)
                      + metric_type_findings("y", 'metric.type="run.googleapis.com/requests"', metrics))
    assert "local.log_metric_types['nope']" in found
    assert "'run.googleapis.com/requests' is neither" in found


def test_every_alert_notifies_the_channels(tf):
    for name, policy in tf.of_type("google_monitoring_alert_policy").items():
        assert policy["notification_channels"] == "${local.alert_channels}", name
        assert len(first(policy, "documentation").get("content", "")) > 50, f"{name}: no documentation for the responder"


# --- the dashboard -----------------------------------------------------------------------------


def template_values(tf: TfConfig, metrics: Metrics) -> dict[str, Any]:
    """What monitoring.tf passes to dashboard.json.tftpl, with the variables' defaults."""
    defaults = {k: v.get("default") for k, v in tf.variables.items()}
    return {
        "title": "splatpipe: dashboard",
        "promql": {k: promql_name(t) for k, t in metrics.types.items()},
        "api_service": tf.locals["function_names"]["api"].replace("${local.p}", defaults["name_prefix"]),
        "uptime_alert": "projects/p/alertPolicies/1",
        "failure_rate_alert": defaults["alert_failure_rate"],
        "queue_wait_alert_minutes": defaults["alert_queue_wait_hours"] * 60,
        "outbox_stuck_alert_minutes": defaults["alert_outbox_stuck_minutes"],
    }


def render_dashboard(tf: TfConfig, metrics: Metrics) -> dict[str, Any]:
    """dashboard.json.tftpl as templatefile() renders it, parsed: a placeholder the template names
    but monitoring.tf does not pass is an error."""
    body = tf.resource("google_monitoring_dashboard", "splatpipe")["dashboard_json"]
    passed = set(re.findall(r"[{,]\s*(\w+) = ", body))
    values = template_values(tf, metrics)
    assert passed == set(values), f"monitoring.tf passes {sorted(passed)}"

    def sub(m: re.Match[str]) -> str:
        name, attr = m.groups()
        assert name in passed, f"the template names ${{{name}}}, which monitoring.tf does not pass"
        if name == "promql":
            assert attr in values["promql"], f"${{promql.{attr}}}: no log-based metric {attr!r}"
            return str(values["promql"][attr])
        return str(values[name])

    text = (TF_DIR / "dashboard.json.tftpl").read_text()
    assert "%{" not in text, "a template directive in the dashboard JSON"
    rendered = _PLACEHOLDER.sub(sub, text).replace("$${", "${")
    return json.loads(rendered)


def test_terraform_renders_the_dashboard_alike(tf, metrics, tmp_path):
    # render_dashboard() stands in for templatefile(); Terraform renders the same values the same.
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH")
    (tmp_path / "values.json").write_text(json.dumps(template_values(tf, metrics)))
    (tmp_path / "main.tf").write_text("")
    expr = f'jsonencode(jsondecode(templatefile("{TF_DIR / "dashboard.json.tftpl"}", jsondecode(file("values.json")))))'
    proc = subprocess.run([terraform, "console"], input=expr, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TF_IN_AUTOMATION": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(json.loads(proc.stdout.strip().splitlines()[-1])) == render_dashboard(tf, metrics)


@pytest.fixture(scope="module")
def dashboard(tf, metrics) -> dict[str, Any]:
    return render_dashboard(tf, metrics)


def _strings(node: Any, key: str) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in ([v] if k == key and isinstance(v, str) else _strings(v, key))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v, key)]
    return []


def test_dashboard_loads_into_the_dashboard_proto(dashboard):
    proto = json_format.ParseDict(dashboard, monitoring_dashboard_v1.Dashboard.pb()())
    tiles = proto.mosaic_layout.tiles
    assert len(tiles) >= 10
    cells: set[tuple[int, int]] = set()
    for tile in tiles:
        assert tile.widget.title
        assert tile.x_pos + tile.width <= proto.mosaic_layout.columns
        area = {(x, y) for x in range(tile.x_pos, tile.x_pos + tile.width)
                for y in range(tile.y_pos, tile.y_pos + tile.height)}
        assert not area & cells, f"tile {tile.widget.title!r} overlaps another"
        cells |= area


def promql_findings(where: str, query: str, metrics: Metrics) -> list[str]:
    """Metrics a PromQL query names that are neither splatpipe's log-based metrics (a distribution
    with a histogram suffix, a counter without) nor in GOOGLE_METRICS; labels it selects or groups
    by that none of its metrics has; state values that are no state."""
    out, labels = [], set(HISTOGRAM_LABELS)
    google = {promql_name(t): t for t in GOOGLE_METRICS}
    for name in _PROMQL_NAME.findall(query):
        if name in google:
            labels |= GOOGLE_METRICS[google[name]]
            continue
        base, suffix = name, ""
        for s in DISTRIBUTION_SUFFIXES:
            if name.endswith(s) and name[: -len(s)] in metrics.promql:
                base, suffix = name[: -len(s)], s
        key = metrics.promql.get(base)
        if key is None:
            out.append(f"{where}: {name} is no metric defined here or in GOOGLE_METRICS")
        elif bool(suffix) != metrics.is_distribution(key):
            out.append(f"{where}: {name}: a {'distribution' if suffix else 'counter'} suffix on "
                       f"{'a counter' if suffix else 'a distribution'}")
        else:
            labels |= metrics.labels(key)
    used = set(re.findall(r"(\w+)\s*=~?\s*\"", query))
    for group in re.findall(r"\bby\s*\(([^)]*)\)", query):
        used |= {g.strip() for g in group.split(",") if g.strip()}
    out += [f"{where}: label {label!r} is on none of its metrics" for label in sorted(used - labels)]
    out += [f"{where}: state {s!r} is no state" for s in _STATE.findall(query) if s not in STATES]
    return out


def test_dashboard_queries_name_defined_or_documented_metrics(dashboard, metrics):
    queries = _strings(dashboard, "prometheusQuery")
    assert len(queries) >= 12
    for q in queries:
        assert not promql_findings("dashboard", q, metrics), promql_findings("dashboard", q, metrics)
    for f in _strings(dashboard, "filter"):
        assert not metric_type_findings("dashboard", f, metrics), metric_type_findings("dashboard", f, metrics)


def test_every_log_metric_is_read_by_the_dashboard_or_an_alert(tf, dashboard, metrics):
    queries = " ".join(_strings(dashboard, "prometheusQuery"))
    read = {k for k, t in metrics.types.items() if re.search(rf"\b{promql_name(t)}(?:_sum|_count|_bucket)?\b", queries)}
    for _, _, cond in _conditions(tf):
        for key in ("filter", "denominator_filter"):
            read |= set(re.findall(r'local\.log_metric_types\["(\w+)"\]', cond.get(key, "")))
    assert set(metrics.defs) - read == set(), f"log-based metrics nothing reads: {set(metrics.defs) - read}"


def test_promql_check_finds_unknown_metrics_and_labels(metrics):
    stage = promql_name(metrics.types["stage_duration_s"])
    finished = promql_name(metrics.types["requests_finished"])
    assert promql_findings("ok", f"sum by (stage, le) (increase({stage}_bucket[1h]))", metrics) == []
    found = "\n".join(
        promql_findings("a", "sum(rate(logging_googleapis_com:user_splatpipe_nope[5m]))", metrics)
        + promql_findings("b", f"sum(increase({stage}[1h]))", metrics)
        + promql_findings("c", f"sum by (error_cde) (increase({finished}[1h]))", metrics)
        + promql_findings("d", f'sum(increase({finished}{{state="DONE"}}[1h]))', metrics))
    assert "a: logging_googleapis_com:user_splatpipe_nope is no metric" in found
    assert "b: " in found and "a counter suffix on a distribution" in found
    assert "c: label 'error_cde'" in found
    assert "d: state 'DONE'" in found


def test_dashboard_figure_is_up_to_date():
    # docs/dashboard.svg (README, "Operating it") is drawn from the dashboard's JSON.
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "dashboard_figure.py"), "--check"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the uptime check --------------------------------------------------------------------------


def test_uptime_check_asks_what_the_api_answers(tf):
    check = tf.resource("google_monitoring_uptime_check_config", "api")
    http = first(check, "http_check")
    assert (first(check, "monitored_resource")["type"], http["use_ssl"], http["port"]) == ("uptime_url", True, 443)
    assert first(check, "monitored_resource")["labels"]["host"] == "${local.api_host}"
    assert tf.locals["api_host"] == '${trimprefix(local.function_urls["api"], "https://")}'
    # GET /status with an unknown token in the header: a Redis lookup, then 404 with this message.
    assert any(r.method == "GET" and r.pattern == http["path"] for r in public_api.ROUTES)
    assert list(http["headers"]) == [TOKEN_HEADER]
    assert first(http, "accepted_response_status_codes")["status_value"] == 404
    matcher = first(check, "content_matchers")
    assert matcher["matcher"] == "CONTAINS_STRING"
    raised = f'NotFoundError("{matcher["content"]}")'
    assert "by_token" in inspect.getsource(public_api.status_by_token)
    assert raised in inspect.getsource(public_api) + inspect.getsource(access), f"nothing raises {raised}"
    # The uptime alert watches this check.
    alert = first(tf.resource("google_monitoring_alert_policy", "api_uptime")["conditions"][0], "condition_threshold")
    assert "${google_monitoring_uptime_check_config.api.uptime_check_id}" in alert["filter"]
