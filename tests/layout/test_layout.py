"""The tree shows the architecture (issue 22): the data plane and the SDK depend on the control
plane only through the shared core, the core loads no web, Redis or Google Cloud library, and
functions/ stays a handful of packages by concern."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ("functions", "emulator")
MAX_FUNCTIONS_TOP_LEVEL = 12


def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (lazy imports in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        hits = sorted(m for m in _imports(path) if m.split(".")[0] in forbidden)
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_the_data_plane_imports_only_the_core_of_the_control_plane() -> None:
    assert _offending("batch_jobs", CONTROL_PLANE) == {}


def test_the_sdk_needs_neither_the_functions_nor_the_local_stack() -> None:
    assert _offending("splatpipe", (*CONTROL_PLANE, "batch_jobs")) == {}


def test_the_core_imports_nothing_of_ours_but_itself() -> None:
    assert _offending("core", (*CONTROL_PLANE, "batch_jobs", "splatpipe")) == {}


# (google.cloud itself is a namespace package that the google-cloud-* wheels' .pth files load at start.)
@pytest.mark.parametrize("heavy", ["flask", "redis", "google.cloud.storage", "google.cloud.firestore",
                                   "functions_framework", "torch", "requests"])
def test_importing_the_core_loads_no_heavy_library(heavy: str) -> None:
    modules = sorted(f"core.{p.stem}" for p in (REPO / "core").glob("*.py") if p.stem != "__init__")
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(any(m == {heavy!r} or m.startswith({heavy!r} + '.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing core loads {heavy}"


def test_functions_is_a_few_packages_by_concern() -> None:
    top = sorted(p.name for p in (REPO / "functions").iterdir()
                 if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file())
    assert len(top) <= MAX_FUNCTIONS_TOP_LEVEL, top


def test_a_package_per_stage() -> None:
    from core.stages import ORDER

    for stage in ORDER:
        assert (REPO / "batch_jobs" / stage / "stage.py").is_file(), stage
