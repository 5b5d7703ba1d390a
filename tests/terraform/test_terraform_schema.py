"""terraform/ against the real provider schemas (hashicorp/google and google-beta 6.50.0, time,
archive), read offline from the cdktf provider wheels: no unknown resource type, argument or
block, no missing required argument, no reference to an attribute that does not exist."""

from __future__ import annotations

import pytest
from packaging.specifiers import SpecifierSet
from provider_schema import WHEELS, load
from schema_check import findings, required_providers
from tfmodel import TfConfig


@pytest.fixture(scope="module")
def schemas(tf):
    return {name: load(name) for name in required_providers(tf)}


def test_every_required_provider_has_its_schema_at_a_version_it_accepts(tf, schemas):
    for name, spec in required_providers(tf).items():
        assert name in WHEELS, f"no schema wheel for provider {name}"
        assert spec["source"] == f"hashicorp/{name}"
        version = schemas[name].provider_version
        assert version == WHEELS[name][2]
        assert version in SpecifierSet(spec["version"].replace(" ", "")), f"{name} {version} outside {spec['version']}"


def test_configuration_matches_the_provider_schemas(tf, schemas):
    found = findings(tf, schemas)
    assert not found, f"{len(found)} schema findings:\n" + "\n".join(found)


BROKEN = '''
resource "google_storage_bucket" "b" {
  name          = "x"
  storage_clas  = "STANDARD"
  versioning = {
    enabled = true
  }
  lifecycle_rule {
    action {
      type = "Delete"
    }
  }
}

resource "google_no_such_thing" "n" {
}

resource "google_project_iam_member" "m" {
  project = "p"
  role    = "roles/x"
  member  = "user:${google_storage_bucket.b.no_such_attr}"
  condition {
    title      = "t"
    expression = google_storage_bucket.missing.name
  }
}

resource "google_workflows_workflow" "w" {
  name        = google_storage_bucket.b.url
  description = google_storage_bucket.b.lifecycle_rule[0].action[0].typo
  dynamic "no_block" {
    for_each = []
    content {}
  }
}
'''


def test_the_check_finds_what_the_schema_forbids(tmp_path, schemas):
    (tmp_path / "main.tf").write_text(BROKEN)
    found = "\n".join(findings(TfConfig(tmp_path), schemas))
    for needle in ("google_storage_bucket.b: required 'location' is missing",
                   "unknown argument or block 'storage_clas'",
                   "'versioning' is a block, written as an argument",
                   "google_storage_bucket.b.lifecycle_rule: required 'condition' is missing",
                   "has no resource google_no_such_thing",
                   "google_storage_bucket.b has no attribute 'no_such_attr'",
                   "reference to google_storage_bucket.missing, which is not declared",
                   "dynamic 'no_block' is not a block",
                   "google_storage_bucket.b.lifecycle_rule[0].action[0] has no attribute 'typo'"):
        assert needle in found, f"{needle!r} not in:\n{found}"
    assert "google_workflows_workflow.w: required" not in found  # every argument optional there
    assert ".url" not in found
