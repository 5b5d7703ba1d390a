"""The providers' own schemas, offline: each `cdktf-cdktf-provider-*` wheel on PyPI carries its
provider's complete schema in a jsii assembly (`_jsii/*.jsii.tgz` -> `package/.jsii`), with every
argument, nested block, required flag and readable attribute of every resource and data source.

scripts/bootstrap.sh downloads the wheels (`pip download --no-deps`) into .cache/provider-schema;
nothing is installed. The first use extracts a compact schema next to each wheel (the assembly of
hashicorp/google is ~100 MB of JSON) and later runs read that.

Terraform names come from the assembly's registry links (`docs/resources/storage_bucket#force_destroy`)
where it has them, else from the camelCase property name.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfmodel import REPO

CACHE = REPO / ".cache" / "provider-schema"

# provider name (as in required_providers) -> (PyPI distribution, version, provider version it carries)
WHEELS = {
    "google": ("cdktf-cdktf-provider-google", "16.12.1", "6.50.0"),
    "google-beta": ("cdktf-cdktf-provider-google-beta", "16.12.1", "6.50.0"),
    "time": ("cdktf-cdktf-provider-time", "11.0.1", "0.13.1"),
    "archive": ("cdktf-cdktf-provider-archive", "11.0.1", "2.7.1"),
}

_FORMAT = 2  # bump when the compact layout changes
_DOC_LINK = re.compile(r"registry\.terraform\.io/providers/hashicorp/([\w-]+)/([\d.]+)/docs/(resources|data-sources)/(\w+)")
_ANCHOR = re.compile(r"docs/(?:resources|data-sources)/\w+#(\w+) ")
_PLUMBING = {"internalValue", "terraformAttribute", "terraformResource", "wrapsSet", "complexObjectIndex",
             "complexObjectIsFromSet", "fqn", "creationStack", "tfResourceType"}


def wheel_path(provider: str) -> Path:
    dist, version, _ = WHEELS[provider]
    return CACHE / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"


def _snake(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", camel).lower()


def _assembly(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as z:
        tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
            member = t.extractfile("package/.jsii")
            assert member is not None
            doc = json.loads(member.read())
    # A compressed assembly is a small redirect document naming the real file.
    if doc.get("schema") == "jsii/file-redirect":
        raise NotImplementedError(f"{wheel.name}: compressed jsii assemblies are not read here")
    return doc


class _Extractor:
    def __init__(self, types: dict[str, Any]) -> None:
        self.types = types

    def _struct_of(self, t: dict[str, Any]) -> tuple[str | None, bool]:
        """(struct fqn, is a list) when the jsii type `t` is a nested block, else (None, False)."""
        if "fqn" in t and self.types.get(t["fqn"], {}).get("datatype"):
            return t["fqn"], False
        if "collection" in t:
            inner, _ = self._struct_of(t["collection"]["elementtype"])
            return inner, inner is not None
        if "union" in t:
            for u in t["union"]["types"]:
                inner, many = self._struct_of(u)
                if inner:
                    return inner, many or "collection" in u
        return None, False

    def args(self, fqn: str, depth: int = 0) -> dict[str, Any]:
        """{terraform name: {"required": bool, "block": nested args or None}} of a config struct."""
        out: dict[str, Any] = {}
        for p in self.types[fqn].get("properties", []):
            m = _ANCHOR.search(p.get("docs", {}).get("remarks", "") or "")
            name = m.group(1) if m else _snake(p["name"])
            struct, _ = self._struct_of(p["type"])
            block = self.args(struct, depth + 1) if struct and depth < 12 else None
            out[name] = {"required": not p.get("optional", False), "block": block}
        return out

    def attrs(self, fqn: str, depth: int = 0) -> dict[str, Any]:
        """{terraform name: nested attributes or None} of a resource class or an output reference."""
        out: dict[str, Any] = {}
        for p in self.types[fqn].get("properties", []):
            if p.get("static") or p["name"] in _PLUMBING or p["name"].endswith("Input"):
                continue
            out[_snake(p["name"])] = self._readable(p["type"], depth)
        return out

    def _readable(self, t: dict[str, Any], depth: int) -> Any:
        target = self.types.get(t.get("fqn", ""))
        if target is None or target.get("kind") != "class" or depth > 12:
            return None
        get = next((m for m in target.get("methods", []) if m["name"] == "get" and m.get("returns")), None)
        if get is not None:  # a list or map of objects: its elements
            return self._readable(get["returns"]["type"], depth + 1)
        return self.attrs(t["fqn"], depth + 1)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider_version": None, "resource": {}, "data": {}}
        for fqn, v in self.types.items():
            if v.get("base") not in ("cdktf.TerraformResource", "cdktf.TerraformDataSource"):
                continue
            m = _DOC_LINK.search(v.get("docs", {}).get("summary", ""))
            assert m, f"{fqn}: no registry link to name its Terraform type"
            provider, version, kind, short = m.groups()
            out["provider_version"] = version
            prefix = f"{provider.split('-')[0]}_"
            # Most links name the type without its provider prefix, a few with it.
            tf_type = short if short.startswith(prefix) else prefix + short
            config = f"{fqn}Config"
            entry = {"args": self.args(config) if config in self.types else {}, "attrs": self.attrs(fqn)}
            out["resource" if kind == "resources" else "data"][tf_type] = entry
        return out


@dataclass(frozen=True)
class ProviderSchema:
    provider: str
    provider_version: str
    resources: dict[str, Any]
    data_sources: dict[str, Any]

    def of(self, mode: str, tf_type: str) -> dict[str, Any] | None:
        return (self.resources if mode == "resource" else self.data_sources).get(tf_type)


def load(provider: str) -> ProviderSchema:
    """The compact schema of `provider`, extracted from its wheel (cached next to it)."""
    wheel = wheel_path(provider)
    if not wheel.exists():
        dist, version, _ = WHEELS[provider]
        raise FileNotFoundError(f"{wheel} is missing: run scripts/bootstrap.sh "
                                f"(pip download --no-deps {dist}=={version} -d {CACHE})")
    compact = wheel.with_suffix(f".schema{_FORMAT}.json")
    if not compact.exists() or compact.stat().st_mtime < wheel.stat().st_mtime:
        types = _assembly(wheel)["types"]
        data = _Extractor(types).schema()
        del types
        tmp = compact.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        tmp.replace(compact)
    data = json.loads(compact.read_text())
    return ProviderSchema(provider, data["provider_version"], data["resource"], data["data"])


if __name__ == "__main__":  # scripts/bootstrap.sh: the requirements to `pip download`
    print(" ".join(f"{dist}=={version}" for dist, version, _ in WHEELS.values()))
