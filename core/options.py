"""Request options: the one schema the API validates and the stages read.

`options` in `POST /trigger-reconstruction` is `{preset: preview|standard|high, …}` plus the
overrides below. The control plane validates and normalises them here (unknown keys and bad
values are the caller's error, a 422); the stage registry (`core.stages.resolve`) turns the
normalised options into per-stage parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRESETS: tuple[str, ...] = ("preview", "standard", "high")
DEFAULT_PRESET = "standard"


@dataclass(frozen=True)
class OptionSpec:
    kind: type  # int, float, bool or str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


OPTION_SPECS: Mapping[str, OptionSpec] = {
    "preset": OptionSpec(str, "quality/speed preset", choices=PRESETS),
    "max_frames": OptionSpec(int, "cap on frames kept by the frames stage", 4, 2000),
    "long_side": OptionSpec(int, "long side in pixels of the kept frames", 128, 4096),
    "matcher": OptionSpec(str, "feature matching", choices=("auto", "sequential", "exhaustive")),
    "mapper": OptionSpec(str, "structure-from-motion mapper", choices=("auto", "global", "incremental")),
    "depth": OptionSpec(bool, "run monocular depth (Depth-Anything-V2)"),
    "splat_steps": OptionSpec(int, "Gaussian Splatting training steps", 10, 100_000),
    "splat_strategy": OptionSpec(str, "densification strategy", choices=("default", "mcmc")),
    "sh_degree": OptionSpec(int, "spherical harmonics degree", 0, 3),
    "depth_loss": OptionSpec(bool, "use the aligned depth maps as a training loss"),
    "mesh": OptionSpec(bool, "extract a mesh"),
    "mesh_voxel_size": OptionSpec(float, "TSDF voxel size in SfM units (0 = automatic)", 0.0, 10.0),
    "spot": OptionSpec(bool, "run the Batch jobs on Spot VMs"),
}


class OptionsError(ValueError):
    """Bad request options; the message names the field and is safe to show the caller."""


def normalize_options(raw: Any) -> dict[str, Any]:
    """Validate `raw` and return the options with `preset` filled in.

    Integers are accepted for float options; booleans are never accepted as numbers.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise OptionsError("options must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        spec = OPTION_SPECS.get(key)
        if spec is None:
            known = ", ".join(sorted(OPTION_SPECS))
            raise OptionsError(f"options.{key} is not a known option (known: {known})")
        out[key] = _check(key, spec, value)
    out.setdefault("preset", DEFAULT_PRESET)
    return out


def _check(key: str, spec: OptionSpec, value: Any) -> Any:
    name = f"options.{key}"
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise OptionsError(f"{name} must be true or false")
        return value
    if spec.kind is str:
        if not isinstance(value, str):
            raise OptionsError(f"{name} must be a string")
        if spec.choices is not None and value not in spec.choices:
            raise OptionsError(f"{name} must be one of {', '.join(spec.choices)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionsError(f"{name} must be a number")
    if spec.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise OptionsError(f"{name} must be an integer")
            value = int(value)
    else:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise OptionsError(f"{name} must be a finite number")
    if spec.minimum is not None and value < spec.minimum:
        raise OptionsError(f"{name} must be at least {spec.minimum:g}")
    if spec.maximum is not None and value > spec.maximum:
        raise OptionsError(f"{name} must be at most {spec.maximum:g}")
    return value


def json_schema() -> dict[str, Any]:
    """The options object as JSON Schema (for the OpenAPI document)."""
    props: dict[str, Any] = {}
    for key, spec in OPTION_SPECS.items():
        if spec.kind is bool:
            p: dict[str, Any] = {"type": "boolean"}
        elif spec.kind is str:
            p = {"type": "string"}
            if spec.choices:
                p["enum"] = list(spec.choices)
        else:
            p = {"type": "integer" if spec.kind is int else "number"}
            if spec.minimum is not None:
                p["minimum"] = spec.minimum
            if spec.maximum is not None:
                p["maximum"] = spec.maximum
        p["description"] = spec.description
        props[key] = p
    return {"type": "object", "additionalProperties": False, "properties": props}
