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


# --- facts stated once (issue 22) -----------------------------------------------------------------

PRODUCT = ("core", "functions", "batch_jobs", "splatpipe", "emulator", "bench")


def _product_sources() -> list[Path]:
    return [p for pkg in PRODUCT for p in sorted((REPO / pkg).rglob("*")) if p.suffix in (".py", ".js", ".html")
            and "__pycache__" not in p.parts and p.name != "viewer.bundle.js"]


def test_media_types_are_listed_in_core_media_only() -> None:
    """No other list, set or table of two or more accepted extensions (one extension alone, such
    as the frames stage's `.jpg` output or a sniffed container's name, is a fact of its own)."""
    from core.media import PHOTO_EXTENSIONS, VIDEO_EXTENSIONS

    listed = set(PHOTO_EXTENSIONS) | set(VIDEO_EXTENSIONS)
    owner = REPO / "core" / "media.py"
    for path in _product_sources():
        if path == owner or path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            elts = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, ast.Set | ast.Tuple | ast.List | ast.Dict) or elts is None:
                continue
            found = [e.value for e in elts if isinstance(e, ast.Constant) and e.value in listed]
            assert len(found) < 2, f"{path.relative_to(REPO)}:{node.lineno} lists media types {found}: read core.media"


def test_the_stage_list_and_the_token_header_are_stated_once() -> None:
    from core.api import TOKEN_HEADER
    from core.stages import ORDER

    for path in _product_sources():
        text = path.read_text()
        rel = path.relative_to(REPO).as_posix()
        if rel != "core/api.py":
            assert f'"{TOKEN_HEADER}"' not in text, f"{rel} spells the token header: read core.api"
        if rel != "core/stages.py":
            tree = ast.parse(text) if path.suffix == ".py" else None
            for node in ast.walk(tree) if tree else ():
                if isinstance(node, ast.Tuple | ast.List) and len(node.elts) == len(ORDER):
                    values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                    assert tuple(values) != ORDER, f"{rel}:{node.lineno} writes out the stage list: read core.stages.ORDER"


def test_stages_read_registered_parameters_without_a_second_default() -> None:
    """`params.get("steps", 1000)` in a stage would be a second default beside the registry's."""
    from core.stages import REGISTRY

    registered = {p for st in REGISTRY.values() for p in st.params}
    for path in sorted((REPO / "batch_jobs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in registered
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("p", "params")):
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} defaults {node.args[0].value!r} again")
