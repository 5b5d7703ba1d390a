"""The stage registry: the one definition of every pipeline stage.

A stage is its name, the stages whose outputs it reads, its parameters (type and value per
preset, and the request options that override them), the machine it runs on (CPU or GPU), its
time limit and task retries on Cloud Batch, the outputs it publishes (name -> file in
`{workspace}/{stage}/`) and whether it is best-effort (its failure leaves the request COMPLETED
with a warning). The control plane reads it to build the Batch jobs (functions.dispatch.batch_job) and to
validate requests; the stage runner (batch_jobs.runner) reads it to resolve parameters and find
a stage's inputs. Nothing here imports heavy code: both planes import `core`, `core` neither.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.options import DEFAULT_PRESET, OPTION_SPECS, PRESETS

Machine = Literal["cpu", "gpu"]
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
"""The depth stage's model when DEPTH_MODEL names none (functions.config.Settings.depth_model too)."""
REPORT_FILE = "report.json"  # every stage's figures, `{stage}/report.json` (batch_jobs.runner writes it)


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]  # stages whose _SUCCESS.json must exist before this one runs
    params: Mapping[str, type]  # parameter -> type (int, float, bool, str)
    presets: Mapping[str, Mapping[str, Any]]  # preset -> every parameter's value
    outputs: Mapping[str, str]  # request output name -> file in {workspace}/{stage}/
    machine: Machine
    max_run_seconds: int  # the Batch task's maxRunDuration
    max_retries: int = 2  # the Batch task's maxRetryCount (a failed attempt runs again)
    options: Mapping[str, str] = field(default_factory=dict)  # request option -> parameter it sets
    # Stages read when they ran for this request (a disabled depth stage leaves nothing to read).
    optional_upstream: tuple[str, ...] = ()
    best_effort: bool = False  # a failure is a warning on a COMPLETED request, not a FAILED one

    @property
    def gpu(self) -> bool:
        return self.machine == "gpu"


_FRAMES = Stage(
    name="frames", upstream=(),
    params={"target_frames": int, "min_frames": int, "long_side": int},
    presets={
        # preview keeps standard's frame size: the camera solution is worth its seconds (at 640 px
        # the pairs disagree more with the model, and SIFT must upsample; docs/stages.md "Presets").
        "preview": {"target_frames": 40, "min_frames": 6, "long_side": 1280},
        "standard": {"target_frames": 120, "min_frames": 6, "long_side": 1280},
        "high": {"target_frames": 300, "min_frames": 8, "long_side": 1920},
    },
    options={"max_frames": "target_frames", "long_side": "long_side"},
    outputs={"frames_report": REPORT_FILE},
    machine="cpu", max_run_seconds=3600,
)

_SFM = Stage(
    name="sfm", upstream=("frames",),
    # exhaustive_max_images: photo sets up to this size are matched all-pairs, larger ones in name
    # order with loop closure; sequential_overlap: neighbours matched per image; loop_stride:
    # keyframe spacing for loop closure.
    params={"matcher": str, "mapper": str, "max_num_features": int, "exhaustive_max_images": int,
            "sequential_overlap": int, "loop_stride": int, "min_registered_fraction": float},
    presets={
        "preview": {"matcher": "auto", "mapper": "auto", "max_num_features": 8192,
                    "exhaustive_max_images": 40, "sequential_overlap": 6, "loop_stride": 5,
                    "min_registered_fraction": 0.5},
        "standard": {"matcher": "auto", "mapper": "auto", "max_num_features": 8192,
                     "exhaustive_max_images": 60, "sequential_overlap": 8, "loop_stride": 6,
                     "min_registered_fraction": 0.5},
        "high": {"matcher": "auto", "mapper": "auto", "max_num_features": 16384,
                 "exhaustive_max_images": 100, "sequential_overlap": 10, "loop_stride": 8,
                 "min_registered_fraction": 0.5},
    },
    options={"matcher": "matcher", "mapper": "mapper"},
    outputs={"sfm_report": REPORT_FILE, "transforms": "transforms.json", "sparse_points": "points.ply"},
    machine="cpu", max_run_seconds=14400,
)

_DEPTH = Stage(
    name="depth", upstream=("sfm",),
    params={"enabled": bool, "input_size": int, "batch_size": int},
    presets={
        "preview": {"enabled": True, "input_size": 252, "batch_size": 4},
        "standard": {"enabled": True, "input_size": 518, "batch_size": 8},
        "high": {"enabled": True, "input_size": 518, "batch_size": 8},
    },
    options={"depth": "enabled"},
    outputs={"depth_report": REPORT_FILE},
    machine="gpu", max_run_seconds=3600,
)

_SPLAT = Stage(
    name="splat", upstream=("sfm",),
    optional_upstream=("depth",),
    # checkpoint_steps / checkpoint_seconds: the whole training state is saved (and the latest
    # splat published) every so many steps or seconds, whichever comes first; a Spot preemption
    # costs at most that much training (batch_jobs.gaussians.checkpoint). seed: the random
    # initialisation and view order.
    params={"steps": int, "strategy": str, "sh_degree": int, "depth_loss": bool, "max_long_side": int,
            "cap_max": int, "cap_per_pixel": float, "opacity_reset": bool, "checkpoint_steps": int,
            "checkpoint_seconds": float, "seed": int},
    presets={
        # preview: about 2 min of training on 2 idle CPU cores for the synthetic 40-view scene at
        # 320 px (cap_max bounds the cost per step); cap_per_pixel lowers the cap for a capture of
        # few photos (batch_jobs.gaussians.strategy.gaussian_budget). The GPU presets keep the
        # gsplat / 3DGS recipe, whose growth has no such limit. opacity_reset: the default
        # strategy's 3DGS opacity reset, which gsplat 1.5.3 skips (gsplat_internals, its docstring);
        # off in preview, where it cost fox and the synthetic scene held-out PSNR (docs/benchmarks.md).
        "preview": {"steps": 1000, "strategy": "default", "sh_degree": 1, "depth_loss": False,
                    "max_long_side": 320, "cap_max": 40_000, "cap_per_pixel": 0.02, "opacity_reset": False,
                    "checkpoint_steps": 200, "checkpoint_seconds": 60.0, "seed": 0},
        "standard": {"steps": 7000, "strategy": "default", "sh_degree": 3, "depth_loss": True,
                     "max_long_side": 1280, "cap_max": 1_500_000, "cap_per_pixel": 0.0, "opacity_reset": True,
                     "checkpoint_steps": 1000, "checkpoint_seconds": 300.0, "seed": 0},
        "high": {"steps": 30000, "strategy": "mcmc", "sh_degree": 3, "depth_loss": True,
                 "max_long_side": 1920, "cap_max": 3_000_000, "cap_per_pixel": 0.0, "opacity_reset": True,
                 "checkpoint_steps": 2000, "checkpoint_seconds": 600.0, "seed": 0},
    },
    options={"splat_steps": "steps", "splat_strategy": "strategy", "sh_degree": "sh_degree",
             "depth_loss": "depth_loss"},
    outputs={"splat_ply": "point_cloud.ply", "splat_spz": "scene.spz", "preview": "preview.png",
             "splat_report": REPORT_FILE},
    machine="gpu", max_run_seconds=21600,
)

_MESH = Stage(
    name="mesh", upstream=("sfm", "splat"),
    params={"enabled": bool, "voxel_size": float, "max_long_side": int},
    presets={
        "preview": {"enabled": True, "voxel_size": 0.0, "max_long_side": 320},
        "standard": {"enabled": True, "voxel_size": 0.0, "max_long_side": 640},
        "high": {"enabled": True, "voxel_size": 0.0, "max_long_side": 1280},
    },
    options={"mesh": "enabled", "mesh_voxel_size": "voxel_size"},
    outputs={"mesh_glb": "mesh.glb", "mesh_ply": "mesh.ply", "mesh_report": REPORT_FILE},
    machine="gpu", max_run_seconds=7200,
    best_effort=True,
)

REGISTRY: Mapping[str, Stage] = {s.name: s for s in (_FRAMES, _SFM, _DEPTH, _SPLAT, _MESH)}
"""Every stage, in pipeline order."""

ORDER: tuple[str, ...] = tuple(REGISTRY)


def stage(name: str) -> Stage:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(ORDER)}") from None


def resolve(name: str, options: Mapping[str, Any], depth_model: str | None = None) -> dict[str, Any]:
    """The parameters of stage `name` for normalised request `options` (core.options):
    the preset's values, then the request's overrides. They are what `_SUCCESS.json` records, so a
    changed parameter reruns the stage."""
    params = _chosen(stage(name), options)
    if name == "depth":
        # The model is part of the parameters: a different model reruns the stage.
        params["model"] = depth_model or os.environ.get("DEPTH_MODEL") or DEFAULT_DEPTH_MODEL
    params["preset"] = options.get("preset", DEFAULT_PRESET)
    return params


def _chosen(st: Stage, options: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's parameter values with the request's overrides."""
    preset = options.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}")
    params = dict(st.presets[preset])
    for option, param in st.options.items():
        if option in options:
            params[param] = options[option]
    return params


def enabled(name: str, options: Mapping[str, Any]) -> bool:
    """False when the request's options switch the stage off (`depth: false`, `mesh: false`):
    such a stage is not run at all."""
    st = stage(name)
    if "enabled" not in st.params:
        return True
    return bool(_chosen(st, options)["enabled"])


def _kind_name(kind: type) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]


def options_catalog() -> dict[str, Any]:
    """Every option: type, default, allowed values, help and its value in each preset (the stage
    registry's preset tables; None when no stage parameter follows the option)."""
    entries: list[dict[str, Any]] = []
    for name, spec in OPTION_SPECS.items():
        per_preset: dict[str, Any] | None = None
        for st in REGISTRY.values():
            param = st.options.get(name)
            if param is not None:
                per_preset = {p: st.presets[p][param] for p in PRESETS}
                break
        entries.append({
            "name": name,
            "type": _kind_name(spec.kind),
            "default": DEFAULT_PRESET if name == "preset" else
            (per_preset[DEFAULT_PRESET] if per_preset is not None else None),
            "preset_values": per_preset,
            "choices": list(spec.choices) if spec.choices else None,
            "minimum": spec.minimum,
            "maximum": spec.maximum,
            "help": spec.description,
        })
    return {"presets": list(PRESETS), "default_preset": DEFAULT_PRESET, "options": entries}
