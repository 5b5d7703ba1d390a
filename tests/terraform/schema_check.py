"""Every resource and data source of `terraform/` against its provider's real schema
(provider_schema.py): the type exists, every argument and nested block (dynamic ones too) exists
where it is written, required arguments are present, and every `type.name.attr...` reference
names a declared resource and an attribute its type has."""

from __future__ import annotations

import re
from typing import Any

from provider_schema import WHEELS, ProviderSchema
from tfmodel import TfConfig, parse

META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}
_PREFIXES = "|".join(sorted({p.split("-")[0] for p in WHEELS}))
_REF = re.compile(rf"(?<![\w.])(data\.)?((?:{_PREFIXES})_[a-z0-9_]+)\.([a-z_][a-z0-9_]*)"
                  r"((?:\[[^\[\]]*\]|\.[a-z_][a-z0-9_]*)*)")
_STEP = re.compile(r"\[[^\[\]]*\]|\.([a-z_][a-z0-9_]*)")


def provider_of(tf_type: str, body: dict[str, Any]) -> str:
    """The provider a block uses: its `provider` meta-argument, else its type's prefix."""
    explicit = str(body.get("provider", "")).strip("${}").split(".")[0]
    return explicit or tf_type.split("_")[0]


def _blocks(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    return None


def _check_body(where: str, body: dict[str, Any], args: dict[str, Any], out: list[str]) -> None:
    present = set()
    for key, value in body.items():
        if key in META_ARGUMENTS:
            continue
        if key == "dynamic":
            for entry in value:
                for label, spec in entry.items():
                    present.add(label)
                    arg = args.get(label)
                    if arg is None or arg["block"] is None:
                        out.append(f"{where}: dynamic {label!r} is not a block of this type")
                        continue
                    for content in _blocks(spec.get("content")) or []:
                        _check_body(f"{where}.{label}", content, arg["block"], out)
            continue
        present.add(key)
        arg = args.get(key)
        if arg is None:
            out.append(f"{where}: unknown argument or block {key!r}")
        elif arg["block"] is not None:
            blocks = _blocks(value)
            if blocks is None:
                out.append(f"{where}: {key!r} is a block, written as an argument")
                continue
            for block in blocks:
                _check_body(f"{where}.{key}", block, arg["block"], out)
        elif _blocks(value) is not None:
            out.append(f"{where}: {key!r} is an argument, written as a block")
    for key, arg in args.items():
        if arg["required"] and key not in present:
            out.append(f"{where}: required {key!r} is missing")


def expressions(text: str) -> list[str]:
    """The `${...}` expressions inside a parsed string (nested braces balanced)."""
    out, i = [], 0
    while (start := text.find("${", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        out.append(text[start + 2:j])
        i = j + 1
    return out


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *_strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _check_reference(where: str, mode: str, tf_type: str, name: str, path: str, cfg: TfConfig,
                     schemas: dict[str, ProviderSchema], out: list[str]) -> None:
    declared = cfg.data if mode == "data" else cfg.resources
    body = declared.get((tf_type, name))
    label = f"{'data.' if mode == 'data' else ''}{tf_type}.{name}"
    if body is None:
        out.append(f"{where}: reference to {label}, which is not declared")
        return
    schema = schemas.get(provider_of(tf_type, body))
    entry = schema.of(mode, tf_type) if schema else None
    if entry is None:
        return  # reported where it is declared
    node: Any = entry["attrs"]
    steps = list(_STEP.finditer(path))
    if steps and steps[0].group(1) is None and ("for_each" in body or "count" in body):
        steps = steps[1:]  # the instance key
    walked = label
    for step in steps:
        attr = step.group(1)
        if node is None:
            return  # inside a map or a primitive: any key goes
        if attr is None:
            walked += step.group(0)
            continue  # an index into a list of objects: same attributes
        if attr not in node:
            out.append(f"{where}: {walked} has no attribute {attr!r}")
            return
        walked += f".{attr}"
        node = node[attr]


def findings(cfg: TfConfig, schemas: dict[str, ProviderSchema]) -> list[str]:
    out: list[str] = []
    for mode, declared in (("resource", cfg.resources), ("data", cfg.data)):
        for (tf_type, name), body in declared.items():
            where = f"{'data.' if mode == 'data' else ''}{tf_type}.{name}"
            provider = provider_of(tf_type, body)
            schema = schemas.get(provider)
            if schema is None:
                out.append(f"{where}: no schema for provider {provider!r}")
                continue
            entry = schema.of(mode, tf_type)
            if entry is None:
                out.append(f"{where}: provider {provider} {schema.provider_version} has no {mode} {tf_type}")
                continue
            _check_body(where, body, entry["args"], out)
    for path, doc in cfg.parsed.items():
        for section in ("resource", "data", "locals", "output", "variable"):
            for s in _strings(doc.get(section, [])):
                for expr in expressions(s):
                    for m in _REF.finditer(expr):
                        mode = "data" if m.group(1) else "resource"
                        _check_reference(f"{path.name}: {m.group(0)}", mode, m.group(2), m.group(3),
                                         m.group(4), cfg, schemas, out)
    return sorted(set(out))


def required_providers(cfg: TfConfig) -> dict[str, dict[str, Any]]:
    versions = parse(cfg.root / "versions.tf")
    return versions["terraform"][0]["required_providers"][0]
