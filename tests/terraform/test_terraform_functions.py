"""The deployed functions match the code: entry points and signature types, the settings the
code reads, the source zip's layout and requirements, Redis wiring, who may invoke what."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import codescan
import pytest
from tfmodel import DeployedFunction, Grant, TfConfig, first, sa_key

PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
INTERNAL_INGRESS = {"ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"}
FINALIZED = "google.cloud.storage.object.v1.finalized"


@pytest.fixture(scope="module")
def entry_points() -> dict[str, str]:
    assert codescan.FUNCTIONS_MAIN.exists(), "functions/main.py (the entry points) is missing"
    found = codescan.entry_points()
    assert found, "functions/main.py registers no functions_framework entry point"
    return found


def invokers(iam: list[Grant], fn: DeployedFunction) -> set[str]:
    return {g.member for g in iam if g.scope in {"run_service", "function"} and g.target == fn.resource
            and g.role in {"roles/run.invoker", "roles/cloudfunctions.invoker"}}


def test_every_entry_point_is_deployed_with_its_signature_type(functions, entry_points):
    assert set(functions) == set(entry_points), "deployed entry points differ from functions/main.py"
    for name, signature in entry_points.items():
        assert functions[name].signature == signature, f"{name}: deployed as {functions[name].signature}"
        assert functions[name].build["runtime"] == "python311"


def test_contract_entry_points_are_in_the_code(entry_points):
    # functions/main.py's entry points (ARCHITECTURE.md "Parts"): the roles below (public api, upload events, scheduler) name these.
    assert entry_points == {"api": "http", "queue": "http", "on_upload": "cloudevent", "dispatch": "http"}


def test_cloudevent_functions_fire_on_object_finalize_in_the_uploads_bucket(tf, functions, iam, entry_points):
    uploads = tf.instance("google_storage_bucket", 'bucket["uploads"]')
    for name in (n for n, s in entry_points.items() if s == "cloudevent"):
        trigger = functions[name].event_trigger
        assert trigger["event_type"] == FINALIZED
        filters = trigger["event_filters"] if isinstance(trigger["event_filters"], list) else [trigger["event_filters"]]
        assert {f["attribute"]: f["value"] for f in filters} == {"bucket": '${google_storage_bucket.bucket["uploads"].name}'}
        # A Cloud Storage trigger lives in its bucket's region.
        assert trigger["trigger_region"] == uploads["location"]
        assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"  # at-least-once; the handler dedups
        trigger_sa = sa_key(trigger["service_account_email"])
        assert trigger_sa and trigger_sa != functions[name].runtime_sa
        assert f"sa:{trigger_sa}" in invokers(iam, functions[name])
        assert any(g.scope == "project" and g.role == "roles/eventarc.eventReceiver" and g.member == f"sa:{trigger_sa}"
                   for g in iam)


def test_every_setting_the_code_reads_is_set_on_the_functions_that_read_it(tf, functions):
    needed = codescan.deployment_env_names()
    assert {"REDIS_URL", "DATA_BUCKET", "UPLOADS_BUCKET"} <= needed, "the scan found no settings"
    # The Batch machine/identity settings are read by the Job body builder, which only dispatch
    # runs: they are dispatch's alone, and Terraform's list of them is the code's.
    batch = codescan.batch_env_names()
    assert {"GPU_TYPE", "BATCH_SERVICE_ACCOUNT"} <= batch, "the scan found no Batch settings"
    assert set(tf.resolve("${local.batch_env}")) == batch
    for name, fn in functions.items():
        plain, secret = set(fn.env), set(fn.secret_env)
        wanted = needed if name == "dispatch" else needed - batch
        assert not plain & secret, f"{name}: set both plainly and from a secret: {plain & secret}"
        assert not wanted - plain - secret, f"{name}: settings the code reads are not set: {wanted - plain - secret}"
        assert not [k for k in plain if k.endswith("_EMULATOR_HOST")], f"{name}: emulator switch deployed"
        if name != "dispatch":
            assert not plain & batch, f"{name}: Batch settings are dispatch's: {plain & batch}"


def test_batch_settings_name_the_batch_account_and_network(functions):
    env = functions["dispatch"].env
    assert env["BATCH_SERVICE_ACCOUNT"] == '${google_service_account.sa["batch"].email}'
    assert env["BATCH_NETWORK"] == "${google_compute_network.vpc.id}"
    assert env["BATCH_SUBNETWORK"] == "${google_compute_subnetwork.batch.id}"
    assert env["PROVISIONING_MODEL"] == '${var.use_spot ? "SPOT" : "STANDARD"}'
    assert env["JOB_IMAGE"] == "${local.job_image}"


def test_settings_values_come_from_the_resources_they_name(tf, functions):
    for fn in functions.values():
        env = fn.env
        assert env["UPLOADS_BUCKET"] == '${google_storage_bucket.bucket["uploads"].name}'
        assert env["DATA_BUCKET"] == '${google_storage_bucket.bucket["data"].name}'
        assert env["GOOGLE_CLOUD_PROJECT"] == "${var.project_id}"
        assert env["REGION"] == "${var.region}"
        workflow = tf.resource("google_workflows_workflow", "reconstruct")
        assert tf.resolve(env["WORKFLOW_NAME"]) == tf.resolve(workflow["name"])
        for setting, variable in (("MAX_CONCURRENT_JOBS", "max_concurrent_jobs"),
                                  ("RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute"),
                                  ("DEDUP_WINDOW_SECONDS", "dedup_window_seconds")):
            if setting in env:
                assert f"var.{variable}" in env[setting]
                assert "description" in tf.variables[variable]


def test_redis_url_holds_auth_and_tls_and_comes_from_secret_manager(tf, functions, iam):
    version = tf.resource("google_secret_manager_secret_version", "redis_url")
    m = re.fullmatch(r"rediss://:\$\{urlencode\(google_redis_instance\.(\w+)\.auth_string\)\}"
                     r"@\$\{google_redis_instance\.(\w+)\.host\}:\$\{google_redis_instance\.(\w+)\.port\}/0",
                     version["secret_data"])
    assert m and len(set(m.groups())) == 1, version["secret_data"]
    redis = tf.resource("google_redis_instance", m.group(1))
    assert redis["tier"] == "STANDARD_HA"
    assert redis["auth_enabled"] is True
    assert redis["transit_encryption_mode"] == "SERVER_AUTHENTICATION"
    assert first(redis, "persistence_config")["persistence_mode"] in {"RDB", "AOF"}
    assert redis.get("redis_configs", {}).get("maxmemory-policy") == "noeviction"
    for name, fn in functions.items():
        assert "REDIS_URL" not in fn.env, f"{name}: REDIS_URL (holds AUTH) must not be a plain variable"
        secret = fn.secret_env.get("REDIS_URL")
        assert secret, f"{name}: REDIS_URL is not delivered from Secret Manager"
        assert secret["secret"] == "${google_secret_manager_secret.redis_url.secret_id}"
        assert secret["version"] == "${google_secret_manager_secret_version.redis_url.version}"
        assert re.fullmatch(rf'\$\{{join\("\\n", google_redis_instance\.{m.group(1)}\.server_ca_certs\[\*\]\.cert\)\}}',
                            fn.env["REDIS_CA_CERT"]), fn.env["REDIS_CA_CERT"]
        assert any(g.scope == "secret" and g.target == "redis_url" and g.member == f"sa:{fn.runtime_sa}"
                   and g.role == "roles/secretmanager.secretAccessor" for g in iam), f"{name} cannot read REDIS_URL"


def test_functions_reach_redis_through_its_network(tf, functions):
    redis = tf.resource("google_redis_instance", "queue")
    for name, fn in functions.items():
        m = re.fullmatch(r"\$\{google_vpc_access_connector\.(\w+)\.id\}", fn.service.get("vpc_connector", ""))
        assert m, f"{name}: no Serverless VPC Access connector"
        # All egress through the VPC: calls to the internal functions then count as internal.
        assert fn.service["vpc_connector_egress_settings"] == "ALL_TRAFFIC"
        connector = tf.resource("google_vpc_access_connector", m.group(1))
        subnet_ref = re.fullmatch(r"\$\{google_compute_subnetwork\.(\w+)\.name\}", first(connector, "subnet")["name"])
        assert subnet_ref
        subnet = tf.resource("google_compute_subnetwork", subnet_ref.group(1))
        assert subnet["network"] == redis["authorized_network"]
        assert subnet["private_ip_google_access"] is True


def test_only_api_is_publicly_invokable(tf, functions, iam):
    public = [g for g in iam if g.member in PUBLIC_MEMBERS]
    assert public, "the api must be public"
    for g in public:
        assert g.scope in {"run_service", "function"} and g.target == functions["api"].resource, g.address
        assert g.role in {"roles/run.invoker", "roles/cloudfunctions.invoker"}, g.address
    # No public member hides anywhere else (a binding, a policy document, a module).
    raw = sum(len(re.findall(r"\ballUsers\b|\ballAuthenticatedUsers\b", re.sub(r"#.*", "", p.read_text())))
              for p in tf.files + tf.module_files)
    assert raw == len(public)
    assert functions["api"].ingress == "ALLOW_ALL"
    for name, fn in functions.items():
        if name != "api":
            assert fn.ingress in INTERNAL_INGRESS, f"{name}: ingress {fn.ingress}"


def test_internal_functions_have_iam_only_invokers(functions, iam):
    for name, fn in functions.items():
        if name == "api":
            continue
        who = invokers(iam, fn)
        assert who, f"{name}: nobody may invoke it"
        assert all(m.startswith("sa:") for m in who), f"{name}: non-service-account invoker {who}"


def test_callers_may_invoke_what_they_call(tf, functions, iam):
    job = tf.resource("google_cloud_scheduler_job", "dispatch")
    target = first(job, "http_target")
    assert target["uri"] == "${local.function_urls.dispatch}"
    oidc = first(target, "oidc_token")
    assert oidc["audience"] == target["uri"]
    assert tf.resolve(job["schedule"]) == "* * * * *"
    scheduler_sa = sa_key(oidc["service_account_email"])
    assert invokers(iam, functions["dispatch"]) >= {f"sa:{scheduler_sa}"}
    workflow_sa = sa_key(tf.resource("google_workflows_workflow", "reconstruct")["service_account"])
    assert f"sa:{workflow_sa}" in invokers(iam, functions["queue"])
    assert f"sa:{workflow_sa}" in invokers(iam, functions["dispatch"])
    # The api starts dispatch after an enqueue.
    assert f"sa:{functions['api'].runtime_sa}" in invokers(iam, functions["dispatch"])


def test_function_urls_are_the_deterministic_run_app_urls(tf, functions):
    # SERVICE-PROJECT_NUMBER.REGION.run.app, SERVICE being the function's name.
    expr = tf.locals["function_urls"]
    assert re.fullmatch(r"\$\{\{for (\w+), (\w+) in local\.function_names : \1 => "
                        r'"https://\$\{\2\}-\$\{data\.google_project\.this\.number\}\.\$\{var\.region\}\.run\.app"\}\}',
                        expr), expr
    for entry, fn in functions.items():
        assert fn.body["name"] == f'${{local.function_names["{entry}"]}}', fn.address
        # a DNS label: SERVICE-PROJECT_NUMBER (12 digits at most) within 63 characters
        name = tf.interpolate(tf.locals["function_names"][entry]).replace("${var.name_prefix}", "x" * 16)
        assert len(name) + 1 + 12 <= 63
    for fn in functions.values():
        assert fn.env["DISPATCH_URL"] == "${local.function_urls.dispatch}"


def test_source_zip_is_the_shim_the_package_and_its_requirements(tf, functions):
    archive = tf.data[("archive_file", "functions")]
    files = {s["filename"]: s["content"] for s in archive["source"]}
    for name, path in (("main.py", tf.root / "functions_shim" / "main.py"),
                       ("requirements.txt", codescan.FUNCTIONS_DIR / "requirements.txt")):
        m = re.fullmatch(r'\$\{file\("(.+)"\)\}', tf.interpolate(files[name]))
        assert m and Path(m.group(1)).resolve() == path, files[name]
    dynamic = {d["source"]["for_each"]: d["source"] for d in archive["dynamic"]}
    assert first(dynamic["${local.function_package_files}"], "content")["filename"] == "functions/${source.value}"
    assert first(dynamic["${local.core_package_files}"], "content")["filename"] == "core/${source.value}"
    assert Path(tf.interpolate("${local.functions_dir}")).resolve() == codescan.FUNCTIONS_DIR
    assert Path(tf.interpolate("${local.core_dir}")).resolve() == codescan.CORE_DIR
    obj = tf.resource("google_storage_bucket_object", "functions_source")
    assert obj["source"] == "${data.archive_file.functions.output_path}"
    assert "${local.function_source_hash}" in obj["name"]  # a code change redeploys
    for fn in functions.values():
        storage = first(first(fn.build, "source"), "storage_source")
        assert storage["object"] == "${google_storage_bucket_object.functions_source.name}"


def _zip_layout(tf: TfConfig, dest: Path) -> None:
    """The source zip's tree, as data.archive_file.functions lays it out."""
    shutil.copy(tf.root / "functions_shim" / "main.py", dest / "main.py")
    shutil.copy(codescan.FUNCTIONS_DIR / "requirements.txt", dest / "requirements.txt")
    for package in (codescan.FUNCTIONS_DIR, codescan.CORE_DIR):
        for src in package.rglob("*"):
            rel = src.relative_to(package)
            if src.is_file() and "__pycache__" not in rel.parts and src.suffix != ".pyc":
                (dest / package.name / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest / package.name / rel)


_LOAD_TARGETS = """
import json, os, sys
import functions_framework
from functions_framework import _function_registry as registry
for target, signature in json.loads(sys.argv[1]).items():
    os.environ.pop("FUNCTION_SIGNATURE_TYPE", None)
    functions_framework.create_app(target, "main.py")
    got = registry.get_func_signature_type(target, None)
    assert got == signature, f"{target}: registered as {got}, expected {signature}"
import core, functions
for package in (functions, core):
    assert os.path.realpath(package.__file__).startswith(os.path.realpath(os.getcwd())), package.__file__
print("loaded", sorted(json.loads(sys.argv[1])))
"""


def test_deployed_layout_loads_every_entry_point(tf, entry_points, tmp_path):
    assert (codescan.FUNCTIONS_DIR / "requirements.txt").exists(), "functions/requirements.txt is missing"
    _zip_layout(tf, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    # Import must not need Google credentials or a live service: point clients at nothing.
    env.update(PYTHONPATH=str(tmp_path), GOOGLE_CLOUD_PROJECT="splatpipe-terraform-test",
               REDIS_URL="redis://127.0.0.1:1/0", FIRESTORE_EMULATOR_HOST="127.0.0.1:1",
               STORAGE_EMULATOR_HOST="http://127.0.0.1:1", WORKFLOWS_EMULATOR_HOST="127.0.0.1:1")
    proc = subprocess.run([sys.executable, "-c", _LOAD_TARGETS, json.dumps(entry_points)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_requirements_cover_what_the_functions_import():
    req = codescan.FUNCTIONS_DIR / "requirements.txt"
    assert req.exists(), "functions/requirements.txt (the deployed requirements.txt) is missing"
    listed = codescan.requirement_names(req)
    installed = codescan.with_dependencies(listed)
    needed = {d for m in codescan.imported_modules() if (d := codescan.distribution_of(m))}
    assert "functions-framework" in listed
    assert not needed - installed, f"imported by functions/, not installed by requirements.txt: {needed - installed}"


def test_functions_import_nothing_heavy_from_the_repository():
    # The function source stays small (ARCHITECTURE.md "Parts"): batch_jobs (and the local stack) are not deployed.
    bad = {m for m in codescan.imported_modules() if m.split(".")[0] in {"batch_jobs", "emulator", "tests"}}
    assert not bad
