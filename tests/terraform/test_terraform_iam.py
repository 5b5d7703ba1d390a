"""Least privilege: no primitive roles, no public bucket, one account per component, impersonation
scoped to single accounts, and each component holding what its work needs."""

from __future__ import annotations

import re

from tfmodel import all_strings, first, sa_key

PRIMITIVE = re.compile(r"\broles/(owner|editor|viewer)\b")
PUBLIC = {"allUsers", "allAuthenticatedUsers"}
AUTHORITATIVE = {"google_project_iam_binding", "google_project_iam_policy", "google_storage_bucket_iam_binding",
                 "google_storage_bucket_iam_policy", "google_storage_bucket_acl",
                 "google_storage_default_object_acl", "google_storage_object_acl"}


def test_no_primitive_roles_anywhere(tf):
    for path in tf.files + tf.module_files:
        assert not PRIMITIVE.search(path.read_text()), f"{path.name} names a primitive role"
    for doc in tf.parsed.values():
        assert not [s for s in all_strings(doc) if PRIMITIVE.search(s)]


def test_no_authoritative_iam_or_acls(tf):
    used = {t for (t, _) in tf.resources}
    assert not used & AUTHORITATIVE, f"authoritative IAM / ACLs replace other grants: {used & AUTHORITATIVE}"


def test_no_public_bucket(tf, iam):
    buckets = {inst.address: inst.body for inst in tf.instances("google_storage_bucket")}
    assert {'google_storage_bucket.bucket["uploads"]', 'google_storage_bucket.bucket["data"]'} <= set(buckets)
    for name, bucket in buckets.items():
        assert bucket["uniform_bucket_level_access"] is True, name
        assert bucket["public_access_prevention"] == "enforced", name
    for g in iam:
        if g.scope == "bucket":
            assert g.member not in PUBLIC, g.address


def test_uploads_expire(tf):
    rules = tf.instance("google_storage_bucket", 'bucket["uploads"]')["lifecycle_rule"]
    expiry = [first(r, "condition")["age"] for r in rules
              if first(r, "action")["type"] == "Delete" and "age" in first(r, "condition")]
    assert expiry == ["${var.upload_expiry_days}"]
    assert tf.variables["upload_expiry_days"]["default"] >= 1


def test_one_account_per_component(tf, functions):
    accounts = set(tf.locals["service_accounts"])
    runtime = {name: fn.runtime_sa for name, fn in functions.items()}
    assert set(runtime.values()) <= accounts
    # api and queue are one component (the control plane's HTTP face); the rest have their own.
    assert runtime["api"] == runtime["queue"]
    assert len({runtime["api"], runtime["on_upload"], runtime["dispatch"]}) == 3
    workflow = sa_key(tf.resource("google_workflows_workflow", "reconstruct")["service_account"])
    scheduler = sa_key(first(first(tf.resource("google_cloud_scheduler_job", "dispatch"), "http_target"),
                             "oidc_token")["service_account_email"])
    eventarc = sa_key(functions["on_upload"].event_trigger["service_account_email"])
    build = {fn.build_sa for fn in functions.values()}
    assert len(build) == 1
    others = [workflow, scheduler, eventarc, build.pop(), "batch"]
    assert len(set(others)) == len(others)
    assert not set(others) & set(runtime.values())
    assert set(others) <= accounts


def test_every_grant_names_a_known_account(tf, iam):
    accounts = set(tf.locals["service_accounts"])
    for g in iam:
        if g.member.startswith("sa:"):
            assert g.member[3:] in accounts, g.address


def test_impersonation_is_scoped_to_single_accounts(iam):
    for g in iam:
        if g.scope == "project":
            assert g.role not in {"roles/iam.serviceAccountUser", "roles/iam.serviceAccountTokenCreator"}, g.address
            assert not re.search(r"admin$|\.admin\b|Admin$", g.role), f"{g.address}: admin role at project level"
    acts_as = [g for g in iam if g.role == "roles/iam.serviceAccountUser"]
    assert [(g.scope, g.target, g.member) for g in acts_as] == [("service_account", "batch", "sa:workflow")]


def _roles(iam, member, scope=None, target=None) -> set[str]:
    return {g.role for g in iam if g.member == member and (scope is None or g.scope == scope)
            and (target is None or g.target == target)}


def test_batch_job_account(iam):
    assert {"roles/batch.agentReporter", "roles/logging.logWriter", "roles/datastore.user"} <= _roles(
        iam, "sa:batch", "project")
    assert _roles(iam, "sa:batch", "bucket", "data") & {"roles/storage.objectUser", "roles/storage.objectAdmin"}
    assert "roles/storage.objectViewer" in _roles(iam, "sa:batch", "bucket", "uploads")
    assert "roles/artifactregistry.reader" in _roles(iam, "sa:batch", "repository", "jobs")


def test_the_api_reads_request_logs(iam):
    # GET /requests/{id}/log lists Cloud Logging entries (logging.logEntries.list).
    assert "roles/logging.viewer" in _roles(iam, "sa:api", "project")


def test_workflow_account(iam):
    assert "roles/batch.jobsEditor" in _roles(iam, "sa:workflow", "project")
    assert "roles/logging.logWriter" in _roles(iam, "sa:workflow", "project")  # call logging


def test_control_plane_accounts(iam, functions):
    for name in ("api", "on_upload", "dispatch"):
        sa = f"sa:{functions[name].runtime_sa}"
        assert "roles/datastore.user" in _roles(iam, sa, "project"), name  # status mirror
        # request.json is written by the control plane (core/workspace.py, by dispatch)
        assert _roles(iam, sa, "bucket", "data") & {"roles/storage.objectUser", "roles/storage.objectAdmin"}, name
    assert "roles/workflows.invoker" in _roles(iam, f"sa:{functions['dispatch'].runtime_sa}", "project")
    # A cancel (on the api) cancels the execution and deletes the stage's Batch job: a custom role
    # with just jobs.get and jobs.delete, not roles/batch.jobsEditor (which can create jobs).
    api_roles = _roles(iam, f"sa:{functions['api'].runtime_sa}", "project")
    assert "roles/workflows.invoker" in api_roles and "roles/batch.jobsEditor" not in api_roles
    assert "${google_project_iam_custom_role.api_batch_jobs.name}" in api_roles, api_roles
    assert "roles/storage.objectViewer" in _roles(iam, f"sa:{functions['on_upload'].runtime_sa}", "bucket", "uploads")
    # POST /preprocess-video stores the uploaded video in the uploads bucket
    assert _roles(iam, f"sa:{functions['api'].runtime_sa}", "bucket", "uploads") >= {
        "roles/storage.objectViewer", "roles/storage.objectCreator"}
    # object roles only: nobody administers a bucket (or its IAM)
    assert not [g for g in iam if g.scope == "bucket" and g.role == "roles/storage.admin"]
    # signed output URLs: the api signs as itself, and only as itself
    api = functions["api"].runtime_sa
    assert any(g.scope == "service_account" and g.target == api and g.member == f"sa:{api}"
               and g.role == "roles/iam.serviceAccountTokenCreator" for g in iam)


def test_builds_push_only_to_their_repositories(iam, functions):
    build = f"sa:{functions['api'].build_sa}"
    assert {(g.target, g.role) for g in iam if g.member == build and g.scope == "repository"} == {
        ("jobs", "roles/artifactregistry.writer"), ("functions", "roles/artifactregistry.writer")}
    assert _roles(iam, build, "project") == {"roles/logging.logWriter", "roles/storage.objectViewer"}
    for fn in functions.values():
        assert fn.build["docker_repository"] == "${google_artifact_registry_repository.functions.id}"


def test_builds_read_the_function_source_copy_and_no_other_bucket(tf, iam, functions):
    # Cloud Functions builds from its own copy in gcf-v2-sources-PROJECT_NUMBER-REGION.
    build = f"sa:{functions['api'].build_sa}"
    storage = [g for g in iam if g.member == build and g.scope == "project" and g.role.startswith("roles/storage.")]
    assert [g.address for g in storage] == ["google_project_iam_member.build_reads_function_sources"]
    condition = first(tf.resource("google_project_iam_member", "build_reads_function_sources"), "condition")
    assert condition["expression"] == 'resource.name.startsWith("projects/_/buckets/${local.function_sources_bucket}")'
    assert tf.locals["function_sources_bucket"] == "gcf-v2-sources-${data.google_project.this.number}-${var.region}"
    # Every project-level storage grant is narrowed to a bucket by a condition.
    for inst in tf.instances("google_project_iam_member"):
        if str(inst.body.get("role", "")).startswith("roles/storage."):
            assert "startsWith(\"projects/_/buckets/" in first(inst.body, "condition").get("expression", ""), inst.address


def test_service_agents_are_created_before_they_are_bound(tf, iam):
    agents = {inst.key: inst.body for inst in tf.instances("google_project_service_identity")}
    assert {b["service"] for b in agents.values()} == {"pubsub.googleapis.com", "eventarc.googleapis.com"}
    assert all(b["provider"] == "google-beta" for b in agents.values())  # beta-only resource
    # An agent created on request holds no role: each gets its usual one here.
    agent_roles = {(g.role, g.member) for g in iam if "google_project_service_identity" in g.member}
    assert ("roles/eventarc.serviceAgent", '${google_project_service_identity.agent["eventarc"].member}') in agent_roles
    assert ("roles/pubsub.serviceAgent", '${google_project_service_identity.agent["pubsub"].member}') in agent_roles
    assert ("roles/iam.serviceAccountTokenCreator",
            '${google_project_service_identity.agent["pubsub"].member}') in agent_roles
    # No agent address is spelled out by hand (it would be bound before it surely exists).
    for path in tf.files:
        assert "gcp-sa-" not in re.sub(r"#.*", "", path.read_text()), path.name


def test_functions_wait_for_the_grants_to_propagate(tf):
    sleep = tf.resource("time_sleep", "iam_propagation")
    assert int(sleep["create_duration"].rstrip("s")) >= 60
    waited = set(sleep["depends_on"])
    for grant in ("${google_project_iam_member.pubsub_agent}", "${google_project_iam_member.eventarc_agent}",
                  "${google_project_iam_member.gcs_publishes_events}",
                  "${google_service_account_iam_member.pubsub_tokens_for_eventarc}",
                  "${google_project_iam_member.build_reads_function_sources}"):
        assert grant in waited, grant
    assert "${time_sleep.iam_propagation}" in tf.resource("google_cloudfunctions2_function", "function")["depends_on"]


def test_storage_agent_publishes_upload_events(iam):
    assert any(g.scope == "project" and g.role == "roles/pubsub.publisher"
               and "google_storage_project_service_account" in g.member for g in iam)


def test_the_api_batch_role_can_read_and_delete_jobs_and_nothing_else(tf):
    """functions/dispatch/batch_control.py deletes a cancelled request's job; the api never creates one."""
    role = tf.resource("google_project_iam_custom_role", "api_batch_jobs")
    assert sorted(role["permissions"]) == ["batch.jobs.delete", "batch.jobs.get"]
    assert role["description"] and role["title"]
    # role_id: letters, digits, underscores and dots, 3 to 64 (the IAM API's rule), from the name prefix
    assert role["role_id"] == '${replace(local.p, "-", "_")}_api_batch_jobs'
