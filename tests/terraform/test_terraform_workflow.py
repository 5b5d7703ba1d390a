"""The workflow is the repository's YAML with every variable it reads set; the job image that it
runs is the one cloudbuild.yaml builds from batch_jobs/Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path

import codescan
import pytest
import yaml
from tfmodel import REPO, sa_key

CLOUDBUILD = REPO / "cloudbuild.yaml"
RESERVED_PREFIXES = ("GOOGLE", "WORKFLOWS")  # Workflows refuses user_env_vars named so


@pytest.fixture(scope="module")
def workflow(tf) -> dict:
    workflows = tf.of_type("google_workflows_workflow")
    assert list(workflows) == ["reconstruct"]
    return workflows["reconstruct"]


@pytest.fixture(scope="module")
def workflow_env(tf, workflow) -> dict[str, str]:
    env = tf.resolve(workflow["user_env_vars"])
    assert isinstance(env, dict)
    return env


def test_workflow_source_is_the_repository_file_read_with_file(tf, workflow):
    m = re.fullmatch(r'\$\{file\("(.+)"\)\}', workflow["source_contents"])
    assert m, "source_contents must be file(...) of workflows/reconstruct.yaml, not a copy"
    path = Path(tf.interpolate(m.group(1))).resolve()
    assert path == codescan.WORKFLOW_YAML
    assert path.exists(), "workflows/reconstruct.yaml is missing"
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and "main" in doc, "a Workflows definition with a main workflow"


def test_every_get_env_of_the_workflow_is_set(workflow_env):
    wanted = codescan.workflow_env_names() - codescan.WORKFLOW_BUILTINS
    assert wanted, "the workflow reads no configuration (sys.get_env)?"
    assert not wanted - set(workflow_env), f"read by the workflow, not in user_env_vars: {wanted - set(workflow_env)}"
    # Nothing it does not read (the Batch settings are dispatch's: test_terraform_functions).
    assert not set(workflow_env) - wanted, f"set, never read by the workflow: {set(workflow_env) - wanted}"
    assert not [k for k in workflow_env if k.startswith(RESERVED_PREFIXES)]
    assert all(isinstance(v, str) for v in workflow_env.values()), "user_env_vars values are strings"


def test_get_env_scan_reads_plain_and_escaped_quotes(tmp_path):
    doc = tmp_path / "w.yaml"
    doc.write_text('- a: ${sys.get_env("PLAIN")}\n- b: {url: "${sys.get_env(\\"ESCAPED\\")}"}\n')
    assert codescan.workflow_env_names(doc) == {"PLAIN", "ESCAPED"}


def test_workflow_settings_point_at_the_right_resources(tf, workflow_env, functions):
    expected = {
        "QUEUE_URL": "${local.function_urls.queue}",
        "DISPATCH_URL": "${local.function_urls.dispatch}",
        "DATA_BUCKET": '${google_storage_bucket.bucket["data"].name}',
        "REGION": "${var.region}",
    }
    for name, value in expected.items():
        if name in workflow_env:
            assert workflow_env[name] == value, name
    if "BATCH_SERVICE_ACCOUNT" in workflow_env:
        assert workflow_env["BATCH_SERVICE_ACCOUNT"] == '${google_service_account.sa["batch"].email}'
    # Names shared with the functions carry the same value in both.
    fn_env = functions["api"].env
    for name in set(fn_env) & set(workflow_env):
        assert fn_env[name] == workflow_env[name], name
    assert fn_env["JOB_IMAGE"] == workflow_env.get("JOB_IMAGE", fn_env["JOB_IMAGE"]) == "${local.job_image}"


def test_workflow_runs_as_its_own_account(workflow):
    assert sa_key(workflow["service_account"]) == "workflow"


def test_workflow_deletion_protection_is_a_variable_off_by_default(tf, workflow):
    # The provider's default (on) would make `terraform destroy` fail on the workflow.
    assert workflow["deletion_protection"] == "${var.workflow_deletion_protection}"
    assert tf.variables["workflow_deletion_protection"]["default"] is False


@pytest.fixture(scope="module")
def cloudbuild() -> dict:
    assert CLOUDBUILD.exists()
    return yaml.safe_load(CLOUDBUILD.read_text())


def test_cloudbuild_builds_the_job_dockerfile_from_the_repository_root(cloudbuild):
    build = [s for s in cloudbuild["steps"] if s.get("args") and s["args"][0] == "build"]
    assert len(build) == 1
    args = build[0]["args"]
    dockerfile = next(a.split("=", 1)[1] for a in args if a.startswith("--file="))
    assert (REPO / dockerfile).exists(), f"{dockerfile} is missing"
    assert dockerfile == "batch_jobs/Dockerfile"
    assert args[-1] == "."  # build context: the repository root
    assert "--tag=${_IMAGE_URI}" in args
    assert cloudbuild["images"] == ["${_IMAGE_URI}"]
    # A user-specified build service account needs Cloud Logging only.
    assert cloudbuild["options"]["logging"] == "CLOUD_LOGGING_ONLY"


def test_cloudbuild_pushes_the_image_terraform_runs(tf, cloudbuild):
    command = tf.outputs["job_image_build_command"]["value"]
    subs = dict(kv.split("=", 1) for kv in re.search(r"--substitutions=([^\"\s]+)", command).group(1).split(","))
    assert set(subs) <= set(cloudbuild["substitutions"]), "Cloud Build rejects undeclared substitutions"
    subs["LOCATION"] = re.search(r"--region=(\$\{[^}]+\})", command).group(1)
    subs["PROJECT_ID"] = re.search(r"--project=(\$\{[^}]+\})", command).group(1)
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: subs[m.group(1)], cloudbuild["substitutions"]["_IMAGE_URI"])
    assert rendered == tf.locals["job_image"]
    assert "--config=cloudbuild.yaml" in command
    assert sa_key(command.split("--service-account=")[1]) == "build"
    assert 'gs://${google_storage_bucket.bucket["sources"].name}/' in command  # staged where the build SA may read
