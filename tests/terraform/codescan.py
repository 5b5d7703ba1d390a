"""What the code asks of a deployment, read from the code itself (never a hard-coded list).

- the Cloud Functions entry points of `functions/main.py` (functions_framework decorators);
- the environment variables `functions/` reads (static scan plus a traced `Settings.from_env()`);
- the names `workflows/reconstruct.yaml` reads with `sys.get_env`;
- the third-party distributions `functions/` imports.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO / "functions"
FUNCTIONS_MAIN = FUNCTIONS_DIR / "main.py"
WORKFLOW_YAML = REPO / "workflows" / "reconstruct.yaml"
# Builds the stages' Batch Job bodies; only dispatch runs it.
BATCH_JOB_MODULE = FUNCTIONS_DIR / "dispatch" / "batch_job.py"
CORE_DIR = REPO / "core"  # the shared core, deployed beside functions/

# functions_framework decorator name -> the signature type Cloud Functions deploys it with.
DECORATORS = {"http": "http", "cloud_event": "cloudevent"}

# Set by the Cloud Run functions runtime itself, never by a deployment.
RUNTIME_PROVIDED = frozenset({
    "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "PORT", "FUNCTION_TARGET",
    "FUNCTION_SIGNATURE_TYPE", "LOG_EXECUTION_ID",
})

# Workflows' built-in variables (sys.get_env answers them without user_env_vars).
WORKFLOW_BUILTINS = frozenset({
    "GOOGLE_CLOUD_PROJECT_ID", "GOOGLE_CLOUD_PROJECT_NUMBER", "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_CLOUD_WORKFLOW_ID", "GOOGLE_CLOUD_WORKFLOW_REVISION_ID",
    "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID",
})


def python_files(root: Path = FUNCTIONS_DIR) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


# --- entry points ---------------------------------------------------------------------------


def _decorator_kind(node: ast.expr, modules: set[str], names: Mapping[str, str]) -> str | None:
    """'http' / 'cloudevent' when `node` is a functions_framework decorator (bare or called)."""
    if isinstance(node, ast.Call):
        node = node.func
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in modules and node.attr in DECORATORS):
        return DECORATORS[node.attr]
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    return None


def entry_points(main: Path = FUNCTIONS_MAIN) -> dict[str, str]:
    """{entry point name: signature type} for every function registered with functions_framework."""
    tree = ast.parse(main.read_text(), filename=str(main))
    modules: set[str] = set()  # names bound to the functions_framework module
    names: dict[str, str] = {}  # names bound to its decorators
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name == "functions_framework")
        elif isinstance(node, ast.ImportFrom) and node.module == "functions_framework":
            names.update({a.asname or a.name: DECORATORS[a.name] for a in node.names if a.name in DECORATORS})

    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                if kind := _decorator_kind(dec, modules, names):
                    found[node.name] = kind
        # `api = functions_framework.http(_api)`
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and (kind := _decorator_kind(node.value.func, modules, names))):
            found.update({t.id: kind for t in node.targets if isinstance(t, ast.Name)})
    return found


# --- environment variables ------------------------------------------------------------------


def _is_environ(node: ast.expr, aliases: frozenset[str] = frozenset()) -> bool:
    """`os.environ`, `environ`, or a local name bound to one of them (`env = os.environ`)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os") or (
        isinstance(node, ast.Name) and (node.id == "environ" or node.id in aliases))


def _environ_aliases(tree: ast.AST) -> frozenset[str]:
    return frozenset(t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _is_environ(node.value)
                     for t in node.targets if isinstance(t, ast.Name))


def _env_key_of_call(call: ast.Call, aliases: frozenset[str] = frozenset()) -> ast.expr | None:
    """The key expression when `call` reads the environment (environ.get, os.getenv, ...)."""
    f = call.func
    if not call.args:
        return None
    if isinstance(f, ast.Attribute) and f.attr in {"get", "setdefault", "pop"} and _is_environ(f.value, aliases):
        return call.args[0]
    if isinstance(f, ast.Attribute) and f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os":
        return call.args[0]
    if isinstance(f, ast.Name) and f.id == "getenv":
        return call.args[0]
    return None


def _env_keys(tree: ast.AST, aliases: frozenset[str] = frozenset()) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            key = _env_key_of_call(node, aliases)
            if key is not None:
                yield key
        elif isinstance(node, ast.Subscript) and _is_environ(node.value, aliases):
            yield node.slice
        elif (isinstance(node, ast.Compare) and any(isinstance(o, ast.In | ast.NotIn) for o in node.ops)
              and any(_is_environ(c, aliases) for c in node.comparators)):
            yield node.left


def _const_str(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def static_env_reads(files: list[Path] | None = None) -> set[str]:
    """Names read from the environment with a literal key, directly or through a local helper
    whose first parameter is the key (`_int("MAX_CONCURRENT_JOBS", 2)`)."""
    names: set[str] = set()
    for path in files if files is not None else python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = _environ_aliases(tree)
        helpers: set[str] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.args.args:
                param = fn.args.args[0].arg
                if any(isinstance(k, ast.Name) and k.id == param for k in _env_keys(fn, aliases)):
                    helpers.add(fn.name)
        for key in _env_keys(tree, aliases):
            if (name := _const_str(key)) is not None:
                names.add(name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers
                    and node.args and (name := _const_str(node.args[0])) is not None):
                names.add(name)
    return names


class _RecordingEnviron(dict):
    """A stand-in for os.environ that remembers every key looked up."""

    def __init__(self, base: Mapping[str, str]) -> None:
        super().__init__(base)
        self.seen: set[str] = set()

    def get(self, key, default=None):  # type: ignore[override]
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.seen.add(key)
        return super().__contains__(key)

    def setdefault(self, key, default=None):  # type: ignore[override]
        self.seen.add(key)
        return super().setdefault(key, default)


def traced_settings_reads() -> set[str]:
    """Every key `Settings.from_env()` looks up, whatever helper it goes through."""
    from functions import config

    recorder = _RecordingEnviron({})
    with mock.patch.object(os, "environ", recorder):
        config.Settings.from_env()
    return recorder.seen


def deployment_env_names() -> set[str]:
    """What a deployment must set on the functions: every read, less the local-stack-only
    `*_EMULATOR_HOST` switches and `LOCAL_*` settings, and what the runtime sets itself."""
    names = static_env_reads() | traced_settings_reads()
    return {n for n in names if not n.endswith("_EMULATOR_HOST") and not n.startswith("LOCAL_")
            and n not in RUNTIME_PROVIDED}


def batch_env_names() -> set[str]:
    """The settings only the Batch Job body builder reads (those it shares with
    `Settings.from_env()` every function reads)."""
    return static_env_reads([BATCH_JOB_MODULE]) - traced_settings_reads()


# --- workflow -------------------------------------------------------------------------------

# Also inside a quoted YAML string, where the quotes are escaped: "${sys.get_env(\"X\")}".
_GET_ENV = re.compile(r"""sys\.get_env\(\s*\\?["']([^"'\\]+)\\?["']""")


def workflow_env_names(path: Path = WORKFLOW_YAML) -> set[str]:
    return set(_GET_ENV.findall(path.read_text()))


# --- imports --------------------------------------------------------------------------------


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def imported_modules(files: list[Path] | None = None) -> set[str]:
    """Absolute imports (dotted module names) of the given files; relative imports excluded.
    `from google.cloud import firestore` counts as google.cloud.firestore."""
    mods: set[str] = set()
    for path in files if files is not None else python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
                mods.update(subs or [node.module])
    return mods


def canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides `module`; None for the standard library, for
    this repository's modules and for bare namespace packages (google, google.cloud)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return None
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(module)
    if spec.origin in (None, "namespace"):
        return None
    origin = Path(spec.origin).resolve()
    if origin.is_relative_to(REPO / top):  # this repository's own packages (not its venvs)
        return None
    for dist_name in sorted(set(importlib.metadata.packages_distributions().get(top, []))):
        dist = importlib.metadata.distribution(dist_name)
        if any(Path(dist.locate_file(f)).resolve() == origin for f in dist.files or []):
            return canonical(dist_name)
    raise LookupError(f"no installed distribution provides {module} ({origin})")


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if m := _REQ_NAME.match(line):
            names.add(canonical(m.group(1)))
    return names


def with_dependencies(names: set[str]) -> set[str]:
    """`names` plus everything they install (their non-extra requirements, recursively)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen
