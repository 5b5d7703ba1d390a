"""The Terraform configuration as data: python-hcl2 parses `terraform/`, and a small resolver
follows `local.*` / `var.*` (defaults) references and expands `for_each` and `dynamic` blocks over
literal maps and lists, so tests can ask "who may invoke dispatch" without a provider or
`terraform plan`."""

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
_MERGE = re.compile(r"\$\{merge\(((?:(?:local|var)\.\w+)(?:, (?:local|var)\.\w+)*)\)\}")
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
        """Follow a whole-string `${local.x}`, `${local.x["k"]}` or `${var.x}` (its default), a
        literal-bool conditional's chosen side and `${merge(local.a, local.b)}` of maps."""
        if depth > 20 or not isinstance(value, str):
            return value
        value = _pick_branch(value)
        merged = _MERGE.fullmatch(value)
        if merged:
            parts = [self.resolve("${" + p.strip() + "}", depth + 1) for p in merged.group(1).split(",")]
            if all(isinstance(p, dict) for p in parts):
                return {k: v for p in parts for k, v in p.items()}
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
        """(function, path) for every `file(...)`, `filesha256(...)`, `templatefile(...)` and
        `fileset(...)` with a path Terraform can know without a plan."""
        out = []
        for doc in self.parsed.values():
            for s in all_strings(doc):
                for fn, arg in re.findall(r'\b(file|filesha256|templatefile|fileset)\("((?:[^"$]|\$\{[^}]*\})*)"', s):
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

    def instance(self, rtype: str, ref: str) -> dict[str, Any]:
        """The body of one instance: `ref` is a resource name, or `name["key"]` for a for_each key."""
        for inst in self.instances(rtype):
            if inst.address == f"{rtype}.{ref}":
                return inst.body
        raise KeyError(f"{rtype}.{ref} is not an instance of the configuration")

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {n: b for (t, n), b in self.resources.items() if t == rtype}

    def _literal(self, expr: Any) -> Any:
        """`expr` resolved, a literal-bool conditional decided and an inline JSON-like list
        (the `[1]` of `cond ? [1] : []`) parsed; anything else as resolve() leaves it."""
        value = self.resolve(_pick_branch(expr))
        m = re.fullmatch(r"\$\{(\[.*\])\}", value, re.S) if isinstance(value, str) else None
        if m:
            try:
                return json.loads(m.group(1))
            except json.JSONDecodeError:
                return value
        return value

    def _for_each_items(self, expr: Any) -> list[tuple[str, Any]] | None:
        """Keys and values of a for_each over a literal map or list; None when not literal."""
        value = self._literal(expr)
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
                out.append(Instance(rtype, name, None, self.expand_dynamic(body)))
                continue
            items = self._for_each_items(body["for_each"])
            rest = {k: v for k, v in body.items() if k != "for_each"}
            if items is None:
                out.append(Instance(rtype, name, "*", body))
                continue
            for key, val in items:
                out.append(Instance(rtype, name, key, self.expand_dynamic(_substitute_each(rest, key, val, "each"))))
        return out

    def expand_dynamic(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with each `dynamic "x"` block whose for_each is literal replaced by its `x`
        blocks (an unexpandable one stays under "dynamic")."""
        out = {k: v for k, v in body.items() if k != "dynamic"}
        kept = []
        for entry in body.get("dynamic", []):
            for label, spec in entry.items():
                value = self._literal(spec["for_each"])
                # A dynamic block's iterator key is the list index or the map key.
                items = (list(value.items()) if isinstance(value, dict)
                         else list(enumerate(value)) if isinstance(value, list) else None)
                if items is None:
                    kept.append({label: spec})
                    continue
                blocks = out.get(label, [])
                blocks = list(blocks) if isinstance(blocks, list) else [blocks]
                for key, val in items:
                    content = first(spec, "content")
                    blocks.append(_substitute_each(content, str(key), self.resolve(val), label))
                out[label] = blocks
        if kept:
            out["dynamic"] = kept
        return out


def _expr_text(value: Any) -> str:
    """`value` as HCL expression text (an interpolation-only string gives its expression)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{(.*)\}", value, re.S)
        return m.group(1) if m else json.dumps(value)
    return json.dumps(value)


def _pick_branch(expr: Any) -> Any:
    """The chosen side of `${true ? A : B}` / `${false ? A : B}` (as `${A}` / `${B}`), else `expr`."""
    m = re.fullmatch(r"\$\{(true|false) \? (.+?) : (.+)\}", expr, re.S) if isinstance(expr, str) else None
    return "${" + (m.group(2) if m.group(1) == "true" else m.group(3)) + "}" if m else expr


_NOTHING = object()


def _path(value: Any, path: str) -> Any:
    """`value.a.b` for path "a.b" over nested dicts (_NOTHING where a step is missing)."""
    for step in filter(None, path.split(".")):
        if not isinstance(value, dict) or step not in value:
            return _NOTHING
        value = value[step]
    return value


def _substitute_each(node: Any, key: str, value: Any, it: str) -> Any:
    """`node` with the iterator `it` (`each`, or a dynamic block's label) replaced by one item:
    whole references become the item's value, references inside expressions its HCL text, and an
    attribute set to `lookup(it.value..., "k", null)` of a missing key is dropped."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            new = _substitute_each(v, key, value, it)
            if new is not _NOTHING:
                out[k] = new
        return out
    if isinstance(node, list):
        return [_substitute_each(v, key, value, it) for v in node]
    if not isinstance(node, str) or f"{it}." not in node:
        return node
    name = re.escape(it)

    whole = re.fullmatch(rf"\$\{{{name}\.value((?:\.\w+)*)\}}", node)
    if whole and _path(value, whole.group(1)) is not _NOTHING:
        return _path(value, whole.group(1))
    lookup = re.fullmatch(rf'\$\{{lookup\({name}\.value((?:\.\w+)*), "(\w+)", null\)\}}', node)
    if lookup and isinstance(_path(value, lookup.group(1)), dict):
        return _path(value, lookup.group(1)).get(lookup.group(2), _NOTHING)
    if node == f"${{{it}.key}}":
        return key

    def field(m: re.Match[str]) -> str:
        return _expr_text(value[m.group(1)]) if isinstance(value, dict) and m.group(1) in value else m.group(0)

    text = re.sub(rf"\b{name}\.value\.(\w+)", field, node)
    text = re.sub(rf"\b{name}\.key\b", json.dumps(key), text)
    text = re.sub(rf"\b{name}\.value\b", _expr_text(value) if not isinstance(value, dict) else f"{it}.value", text)
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

# The granted-on resource: its name, or its for_each key for an instance (`sa["batch"]` -> batch).
_KEY = r'(?:\["([^"]+)"\])?'
_TARGET_REFS = {
    "bucket": re.compile(r"google_storage_bucket\.(\w+)" + _KEY),
    "run_service": re.compile(r"google_cloudfunctions2_function\.(\w+)" + _KEY),
    "function": re.compile(r"google_cloudfunctions2_function\.(\w+)" + _KEY),
    "service_account": SA_REF,
    "repository": re.compile(r"google_artifact_registry_repository\.(\w+)"),
    "secret": re.compile(r"google_secret_manager_secret\.(\w+)"),
}


@dataclass(frozen=True)
class Grant:
    scope: str  # project, bucket, run_service, service_account, repository, secret, ...
    target: str | None  # the resource granted on: Terraform name or for_each key (None: the project)
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
                target = next(g for g in reversed(m.groups()) if g) if m else ref
            out.append(Grant(scope, target, str(inst.body.get("role")), _member(inst.body.get("member")),
                             inst.address))
    return out


# --- functions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployedFunction:
    resource: str  # as grants name it: the for_each key of an instance, else the Terraform name
    address: str  # the Terraform instance address
    body: dict[str, Any]  # the instance's arguments, for_each and dynamic blocks expanded
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
    for inst in cfg.instances("google_cloudfunctions2_function"):
        body = inst.body
        # An unexpanded dynamic trigger would pass for an HTTP function.
        assert not [d for d in body.get("dynamic", []) if "event_trigger" in d], f"{inst.address}: unresolved trigger"
        build, service, trigger = first(body, "build_config"), first(body, "service_config"), first(body, "event_trigger")
        env = cfg.resolve(service.get("environment_variables", {}))
        secrets = service.get("secret_environment_variables", [])
        secrets = secrets if isinstance(secrets, list) else [secrets]
        entry = build["entry_point"]
        assert entry not in out, f"entry point {entry} deployed twice"
        out[entry] = DeployedFunction(
            resource=inst.key if inst.key is not None else inst.name,
            address=inst.address,
            body=body,
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
