"""The deployed function source (functions/ and the shared core/, terraform/functions.tf) stays light
and self-sufficient: it never imports the data plane or the local stack, and every third-party
module it imports is installed by functions/requirements.txt (directly or as a dependency of a
listed package)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

from fn_testlib import REPO

FUNCTIONS = REPO / "functions"
CORE = REPO / "core"
OURS = ("functions", "core", "__future__")


def _is_module(name: str) -> bool:
    if name.split(".")[0] in OURS:
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _imports() -> dict[str, set[str]]:
    """module -> the files of functions/ and core/ importing it (absolute imports only; we use no others)."""
    found: dict[str, set[str]] = {}
    for path in [*FUNCTIONS.rglob("*.py"), *CORE.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import (imports in functions/ are absolute)"
                # `from google.cloud import firestore` imports the module google.cloud.firestore.
                names = [f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}") else str(node.module)
                         for a in node.names]
            for n in names:
                found.setdefault(n, set()).add(path.name)
    return found


def test_no_data_plane_or_emulator_imports() -> None:
    bad = {m: files for m, files in _imports().items() if m.split(".")[0] in ("batch_jobs", "emulator", "tests")}
    assert not bad


def test_the_domain_modules_do_not_know_http() -> None:
    """Their errors are functions.errors kinds; statuses are decided at the edge (functions.edge.json_api)."""
    domain = ("functions.queue_store.store", "functions.intake.validation", "core.record",
              "functions.lifecycle.control", "functions.lifecycle.downloads", "functions.lifecycle.uploads")
    code = f"import sys, {', '.join(domain)}; print('flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@cache
def _top_level_dists() -> dict[str, list[str]]:
    return md.packages_distributions()


def _dist_of(module: str, origin: str) -> str | None:
    """The distribution that installed `origin` (only the few that provide its top-level name)."""
    target = Path(origin).resolve()
    for name in _top_level_dists().get(module.split(".")[0], []):
        dist = md.distribution(name)
        for f in dist.files or ():
            if str(f).endswith(".py") and Path(dist.locate_file(f)).resolve() == target:
                return dist.metadata["Name"].lower().replace("_", "-")
    return None


def _requirement_closure() -> set[str]:
    listed = []
    for line in (FUNCTIONS / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            listed.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    closure, todo = set(), list(listed)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0].lower().replace("_", "-"))
    return closure


def test_requirements_cover_every_third_party_import() -> None:
    closure = _requirement_closure()
    missing = {}
    for module, files in _imports().items():
        top = module.split(".")[0]
        if top in OURS or top in sys.stdlib_module_names:
            continue
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        dist = _dist_of(module, spec.origin)
        if dist not in closure:
            missing[module] = (dist, sorted(files))
    assert not missing, f"not installed by functions/requirements.txt: {missing}"


def test_lua_scripts_are_package_data() -> None:
    # functions.queue_store.store reads functions/queue_store/lua/*.lua at import: an installed package needs them
    # (terraform's source zip takes every file of functions/ and core/).
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["functions.queue_store"]
    scripts = [p.relative_to(FUNCTIONS / "queue_store") for p in FUNCTIONS.glob("queue_store/lua/*.lua")]
    assert scripts and all(any(p.match(g) for g in globs) for p in scripts)
