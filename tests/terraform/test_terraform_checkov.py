"""checkov (its own venv, made by scripts/bootstrap.sh): no failed check; every skipped check is
an inline `#checkov:skip=ID:reason` next to its resource, with a reason, and covers one instance."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from tfmodel import REPO, TF_DIR

# Runs checkov over the whole tree (about 17 s): part of `make test`, not of `make check`.
pytestmark = pytest.mark.slow

CHECKOV = Path(os.environ.get("CHECKOV", REPO / ".venv-checkov" / "bin" / "checkov"))
INLINE_SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_[A-Z]+_\d+):(.+)")


def run_checkov(directory: Path = TF_DIR) -> dict:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run scripts/bootstrap.sh (it installs checkov in .venv-checkov)"
    proc = subprocess.run(
        [str(CHECKOV), "--directory", str(directory), "--framework", "terraform", "--skip-download",
         "--output", "json", "--no-fail-on-crash"],
        capture_output=True, text=True, timeout=110, cwd=REPO,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def report() -> dict:
    return run_checkov()


def test_checkov_passes_with_justified_inline_skips(report):
    summary = report["summary"]
    failed = report["results"]["failed_checks"]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 20, "checkov scanned next to nothing"
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']} {c['check_name']}" for c in failed)

    inline = {}
    for path in sorted(TF_DIR.rglob("*.tf")):
        for check_id, reason in INLINE_SKIP.findall(path.read_text()):
            inline.setdefault(check_id, []).append(reason.strip())
    for check in report["results"]["skipped_checks"]:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert check["check_id"] in inline, f"{check['check_id']} skipped outside the .tf files"
        assert len(reason) >= 30, f"{check['check_id']} on {check['resource']}: no real justification"
    # No blanket skips through a config file.
    for cfg in (REPO / ".checkov.yaml", REPO / ".checkov.yml", TF_DIR / ".checkov.yaml", TF_DIR / ".checkov.yml"):
        assert not cfg.exists(), f"{cfg}: keep skips inline, next to their resource"


def test_each_inline_skip_covers_one_failing_instance(report, tmp_path):
    # checkov applies an inline skip to every instance of a for_each resource: the skip for the
    # public api would also hide the internal functions' ingress. Without the skips, each skip
    # comment must account for exactly one failure, on a resource that carries it.
    copy = tmp_path / "terraform"
    shutil.copytree(TF_DIR, copy, ignore=shutil.ignore_patterns("build", ".terraform*"))
    inline: Counter[str] = Counter()
    for path in copy.rglob("*.tf"):
        text = path.read_text()
        inline.update(check_id for check_id, _ in INLINE_SKIP.findall(text))
        path.write_text(INLINE_SKIP.sub("", text))
    bare = run_checkov(copy)
    failed = bare["results"]["failed_checks"]
    assert bare["summary"]["parsing_errors"] == 0
    assert Counter(c["check_id"] for c in failed) == inline, "\n".join(
        f"{c['check_id']} {c['resource']}" for c in failed)
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    assert {(c["check_id"], c["resource"]) for c in failed} <= skipped
