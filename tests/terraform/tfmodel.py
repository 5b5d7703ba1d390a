"""The Terraform configuration as data: python-hcl2 parses `terraform/`, and a small resolver
follows `local.*` / `var.*` (defaults) references and expands `for_each` over literal maps and
lists, so tests can ask "who may invoke dispatch" without a provider or `terraform plan`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "terraform"

_LOCAL_OR_VAR = re.compile(r'^\$\{(local|var)\.(\w+)(?:\["([^"]+)"\])?\}$')
SA_REF = re.compile(r'google_service_account\.sa\["([\w-]+)"\]')


def parse(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if hasattr(hcl2, "SerializationOptions"):  # python-hcl2 >= 7
        opts = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
        return hcl2.loads(text, serialization_options=opts)
    return hcl2.loads(text)


def first(body: dict[str, Any], block: str) -> dict[str, Any]:
    """The single nested block `block` of a resource body ({} when absent)."""
    value = body.get(block)
    if isinstance(value, list):
        return value[0] if value else {}
    return value or {}


@dataclass(frozen=True)
class Instance:
    """One instance of a resource (one per for_each key; key None without for_each)."""

    type: str
    name: str
    key: str | None
    body: dict[str, Any]

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}" + (f'["{self.key}"]' if self.key is not None else "")


class TfConfig:
    def __init__(self, root: Path = TF_DIR) -> None:
        self.root = root
        self.files = sorted(root.glob("*.tf"))
        self.module_files = sorted((root / "modules").glob("**/*.tf"))
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.parsed: dict[Path, dict[str, Any]] = {}
        for path in self.files:
            doc = self.parsed[path] = parse(path)
            for block in doc.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources[(rtype, name)] = body
            for block in doc.get("data", []):
                for dtype, named in block.items():
                    for name, body in named.items():
                        self.data[(dtype, name)] = body
            for block in doc.get("locals", []):
                self.locals.update(block)
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)

    # --- references ---------------------------------------------------------------------------

    def resolve(self, value: Any, depth: int = 0) -> Any:
        """Follow a whole-string `${local.x}`, `${local.x["k"]}` or `${var.x}` (its default)."""
        if depth > 20 or not isinstance(value, str):
            return value
        m = _LOCAL_OR_VAR.match(value)
        if not m:
            return value
        kind, name, key = m.groups()
        if kind == "local":
            if name not in self.locals:
                raise KeyError(f"local.{name} is not defined")
            target = self.locals[name]
        else:
            if name not in self.variables:
                raise KeyError(f"var.{name} is not declared")
            if "default" not in self.variables[name]:
                return value
            target = self.variables[name]["default"]
        target = self.resolve(target, depth + 1)
        if key is not None:
            target = self.resolve(target[key], depth + 1)
        return target

    def interpolate(self, text: str) -> str:
        """Substitute `${path.module}` and string locals inside a template string."""
        for _ in range(20):
            new = text.replace("${path.module}", str(self.root))
            new = re.sub(r"\$\{local\.(\w+)\}",
                         lambda m: str(self.locals[m.group(1)]) if isinstance(self.locals.get(m.group(1)), str)
                         else m.group(0), new)
            if new == text:
                break
            text = new
        return text

    def file_paths(self) -> list[tuple[str, Path]]:
        """(function, path) for every `file(...)`, `filesha256(...)` and `fileset(...)` with a
        path Terraform can know without a plan."""
        out = []
        for doc in self.parsed.values():
            for s in all_strings(doc):
                for fn, arg in re.findall(r'\b(file|filesha256|fileset)\("((?:[^"$]|\$\{[^}]*\})*)"', s):
                    path = self.interpolate(arg)
                    if "${" not in path:
                        out.append((fn, Path(path).resolve()))
                for fn, local in re.findall(r"\b(fileset)\(local\.(\w+)", s):
                    path = self.interpolate("${local." + local + "}")
                    if "${" not in path:
                        out.append((fn, Path(path).resolve()))
        return out

    def resource(self, rtype: str, name: str) -> dict[str, Any]:
        return self.resources[(rtype, name)]

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {n: b for (t, n), b in self.resources.items() if t == rtype}

    def _for_each_items(self, expr: Any) -> list[tuple[str, Any]] | None:
        """Keys and values of a for_each over a literal map or list; None when not literal."""
        value = self.resolve(expr)
        if isinstance(value, str):
            m = re.fullmatch(r"\$\{toset\((.*)\)\}", value, re.S)
            if m:
                inner = m.group(1).strip()
                inner_value = self.resolve("${" + inner + "}") if inner.startswith(("local.", "var.")) else None
                if isinstance(inner_value, list):
                    return [(str(v), v) for v in inner_value]
                try:
                    return [(str(v), v) for v in json.loads(inner)]
                except json.JSONDecodeError:
                    return None
            return None
        if isinstance(value, dict):
            return [(k, v) for k, v in value.items()]
        if isinstance(value, list):
            return [(str(v), v) for v in value]
        return None

    def instances(self, rtype: str) -> list[Instance]:
        """Every instance of every resource of `rtype`, for_each expanded where literal (an
        unexpandable for_each stays one instance with `each.*` left in place)."""
        out: list[Instance] = []
        for name, body in self.of_type(rtype).items():
            if "for_each" not in body:
                out.append(Instance(rtype, name, None, body))
                continue
            items = self._for_each_items(body["for_each"])
            if items is None:
                out.append(Instance(rtype, name, "*", body))
                continue
            for key, val in items:
                out.append(Instance(rtype, name, key, _substitute_each(body, key, val)))
        return out


def _expr_text(value: Any) -> str:
    """`value` as HCL expression text (an interpolation-only string gives its expression)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{(.*)\}", value, re.S)
        return m.group(1) if m else json.dumps(value)
    return json.dumps(value)


def _substitute_each(node: Any, key: str, value: Any) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_each(v, key, value) for k, v in node.items() if k != "for_each"}
    if isinstance(node, list):
        return [_substitute_each(v, key, value) for v in node]
    if not isinstance(node, str) or "each." not in node:
        return node

    def field(m: re.Match[str]) -> str:
        return _expr_text(value[m.group(1)]) if isinstance(value, dict) else m.group(0)

    whole = re.fullmatch(r"\$\{each\.value\.(\w+)\}", node)
    if whole and isinstance(value, dict):
        return value[whole.group(1)]
    if node == "${each.value}":
        return value
    if node == "${each.key}":
        return key
    text = re.sub(r"each\.value\.(\w+)", field, node)
    text = re.sub(r"\beach\.key\b", json.dumps(key), text)
    text = re.sub(r"\beach\.value\b", _expr_text(value) if not isinstance(value, dict) else "each.value", text)
    return text


def sa_key(expr: Any) -> str | None:
    """'api' for an expression naming `google_service_account.sa["api"]`."""
    m = SA_REF.search(str(expr))
    return m.group(1) if m else None


def all_strings(node: Any) -> list[str]:
    """Every string (keys and values) inside a parsed document."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(str(k))
            out.extend(all_strings(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(all_strings(v))
    elif isinstance(node, str):
        out.append(node)
    return out


# --- IAM ------------------------------------------------------------------------------------

# IAM member resources: type -> (scope name, the argument naming the resource granted on).
IAM_MEMBER_TYPES = {
    "google_project_iam_member": ("project", None),
    "google_storage_bucket_iam_member": ("bucket", "bucket"),
    "google_cloud_run_v2_service_iam_member": ("run_service", "name"),
    "google_cloud_run_service_iam_member": ("run_service", "service"),
    "google_cloudfunctions2_function_iam_member": ("function", "cloud_function"),
    "google_service_account_iam_member": ("service_account", "service_account_id"),
    "google_artifact_registry_repository_iam_member": ("repository", "repository"),
    "google_secret_manager_secret_iam_member": ("secret", "secret_id"),
}

_TARGET_REFS = {
    "bucket": re.compile(r"google_storage_bucket\.(\w+)"),
    "run_service": re.compile(r"google_cloudfunctions2_function\.(\w+)"),
    "function": re.compile(r"google_cloudfunctions2_function\.(\w+)"),
    "service_account": SA_REF,
    "repository": re.compile(r"google_artifact_registry_repository\.(\w+)"),
    "secret": re.compile(r"google_secret_manager_secret\.(\w+)"),
}


@dataclass(frozen=True)
class Grant:
    scope: str  # project, bucket, run_service, service_account, repository, secret, ...
    target: str | None  # the Terraform name of the resource granted on (None: the project)
    role: str
    member: str  # "sa:<component>" for the module's own accounts, else the literal member
    address: str


def _member(expr: Any) -> str:
    key = sa_key(expr)
    return f"sa:{key}" if key else str(expr)


def grants(cfg: TfConfig) -> list[Grant]:
    out: list[Grant] = []
    for rtype, (scope, arg) in IAM_MEMBER_TYPES.items():
        for inst in cfg.instances(rtype):
            target = None
            if arg is not None:
                ref = str(cfg.resolve(inst.body.get(arg, "")))
                m = _TARGET_REFS[scope].search(ref)
                target = m.group(1) if m else ref
            out.append(Grant(scope, target, str(inst.body.get("role")), _member(inst.body.get("member")),
                             inst.address))
    return out


# --- functions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployedFunction:
    resource: str  # Terraform name
    entry_point: str
    signature: str  # http | cloudevent
    event_trigger: dict[str, Any]
    ingress: str
    runtime_sa: str | None
    build_sa: str | None
    env: dict[str, Any]
    secret_env: dict[str, dict[str, Any]]
    build: dict[str, Any]
    service: dict[str, Any]


def deployed_functions(cfg: TfConfig) -> dict[str, DeployedFunction]:
    """{entry point: its deployment} for every google_cloudfunctions2_function."""
    out: dict[str, DeployedFunction] = {}
    for name, body in cfg.of_type("google_cloudfunctions2_function").items():
        build, service, trigger = first(body, "build_config"), first(body, "service_config"), first(body, "event_trigger")
        env = cfg.resolve(service.get("environment_variables", {}))
        secrets = service.get("secret_environment_variables", [])
        secrets = secrets if isinstance(secrets, list) else [secrets]
        entry = build["entry_point"]
        assert entry not in out, f"entry point {entry} deployed twice"
        out[entry] = DeployedFunction(
            resource=name,
            entry_point=entry,
            signature="cloudevent" if trigger else "http",
            event_trigger=trigger,
            ingress=cfg.resolve(service.get("ingress_settings", "ALLOW_ALL")),
            runtime_sa=sa_key(service.get("service_account_email")),
            build_sa=sa_key(cfg.resolve(build.get("service_account"))),
            env=env if isinstance(env, dict) else {},
            secret_env={s["key"]: s for s in secrets},
            build=build,
            service=service,
        )
    return out
