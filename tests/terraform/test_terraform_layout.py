"""The module's shape: terraform-google-modules layout, documented variables and outputs,
`terraform fmt`, the APIs its resources need, files it reads, the deploy guide (docs/deploy.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from tfmodel import REPO, TF_DIR, TfConfig, parse

# Resource type prefix -> the API it needs.
APIS_BY_TYPE = {
    "google_cloudfunctions2_function": {"cloudfunctions.googleapis.com", "run.googleapis.com",
                                        "cloudbuild.googleapis.com", "artifactregistry.googleapis.com"},
    "google_cloud_run": {"run.googleapis.com"},
    "google_redis_instance": {"redis.googleapis.com"},
    "google_workflows_workflow": {"workflows.googleapis.com"},
    "google_cloud_scheduler_job": {"cloudscheduler.googleapis.com"},
    "google_vpc_access_connector": {"vpcaccess.googleapis.com"},
    "google_secret_manager": {"secretmanager.googleapis.com"},
    "google_firestore_database": {"firestore.googleapis.com"},
    "google_compute": {"compute.googleapis.com"},
    "google_storage_bucket": {"storage.googleapis.com"},
    "google_artifact_registry": {"artifactregistry.googleapis.com"},
    "google_service_account": {"iam.googleapis.com"},
    "google_logging_metric": {"logging.googleapis.com"},
    "google_monitoring": {"monitoring.googleapis.com"},
}
# Used at run time rather than by a resource: upload events (Eventarc over Pub/Sub), the
# workflow's Batch jobs, dispatch starting executions, the api signing URLs.
RUNTIME_APIS = {"eventarc.googleapis.com", "pubsub.googleapis.com", "batch.googleapis.com",
                "workflowexecutions.googleapis.com", "iamcredentials.googleapis.com", "logging.googleapis.com"}


def test_root_module_layout():
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (TF_DIR / name).exists(), name
    versions = parse(TF_DIR / "versions.tf")
    providers = versions["terraform"][0]["required_providers"][0]
    assert {"google", "archive"} <= set(providers)


def test_every_variable_and_output_is_described(tf):
    configs = [tf] + [TfConfig(d) for d in sorted({p.parent for p in tf.module_files})]
    for cfg in configs:
        for name, var in cfg.variables.items():
            assert len(var.get("description", "")) > 10, f"variable {name} has no description"
            assert "type" in var, f"variable {name} has no type"
        for name, out in cfg.outputs.items():
            assert len(out.get("description", "")) > 10, f"output {name} has no description"


def test_required_variables_and_outputs_exist(tf):
    for name in ("project_id", "region", "gpu_type", "gpu_count", "gpu_machine_type", "cpu_machine_type",
                 "use_spot", "max_concurrent_jobs", "rate_limit_per_minute", "dedup_window_seconds",
                 "upload_expiry_days", "job_image_tag", "depth_model"):
        assert name in tf.variables, name
    assert "default" not in tf.variables["project_id"]
    assert tf.variables["rate_limit_per_minute"]["default"] == 10
    for name in ("api_url", "uploads_bucket", "data_bucket", "workflow_name", "artifact_registry_repository",
                 "service_accounts"):
        assert name in tf.outputs, name


def test_every_variable_is_used(tf):
    text = "\n".join(p.read_text() for p in tf.files)
    for name in tf.variables:
        assert re.search(rf"\bvar\.{name}\b", text), f"variable {name} is declared but never used"


def test_terraform_fmt():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH")
    proc = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TF_IN_AUTOMATION": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_apis_are_enabled_for_every_resource(tf):
    enabled = set(tf.locals["services"])
    used = {t for (t, _) in tf.resources}
    needed = set(RUNTIME_APIS)
    for prefix, apis in APIS_BY_TYPE.items():
        if any(t.startswith(prefix) for t in used):
            needed |= apis
    assert not needed - enabled, f"APIs not enabled: {needed - enabled}"
    assert tf.resource("google_project_service", "enabled")["disable_on_destroy"] is False


def test_moved_blocks_lead_to_instances(tf):
    # A state move whose target is gone would make Terraform replace the resource instead.
    declared = {f"{t}.{n}" for (t, n) in tf.resources}
    instances = {inst.address for rtype in {t for (t, _) in tf.resources} for inst in tf.instances(rtype)}
    for doc in tf.parsed.values():
        for moved in doc.get("moved", []):
            source, target = (re.fullmatch(r"\$\{(.+)\}", moved[k]).group(1) for k in ("from", "to"))
            assert target in instances, f"moved to {target}, which the configuration does not declare"
            assert source not in declared, f"{source} is still declared"


def test_files_read_by_terraform_exist(tf):
    paths = tf.file_paths()
    assert paths
    for fn, path in paths:
        assert path.exists(), f"{fn}() of a missing path: {path}"


def test_local_build_output_is_not_tracked():
    archive = TF_DIR / "build" / "functions-source.zip"
    proc = subprocess.run(["git", "check-ignore", "-q", str(archive)], cwd=REPO, capture_output=True, timeout=30)
    assert proc.returncode == 0, "terraform/build/ (the zipped function source) must be git-ignored"


def test_deploy_guide():
    text = (REPO / "docs" / "deploy.md").read_text()
    assert text.startswith("# Deploy to Google Cloud\n"), "docs/deploy.md is not the deploy guide"
    for needle in ("terraform init", "terraform apply", "cloudbuild.yaml", "gcloud auth print-identity-token",
                   "curl"):
        assert needle in text, f"docs/deploy.md does not mention {needle!r}"
    readme = (REPO / "README.md").read_text()
    assert "(docs/deploy.md)" in readme, "the README does not link the deploy guide"
