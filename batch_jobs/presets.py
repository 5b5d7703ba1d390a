"""Presets: normalised request options -> each stage's parameters.

A preset gives every parameter; an explicit option in the request overrides it. The parameters
a stage receives are what its `_SUCCESS.json` records, so a changed parameter reruns the stage.
"""

from __future__ import annotations

import os
from typing import Any

from functions.options import DEFAULT_PRESET, PRESETS

# Per stage, per preset. Keys are the stage's own parameter names.
STAGE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "frames": {
        "preview": {"target_frames": 40, "min_frames": 6, "long_side": 640},
        "standard": {"target_frames": 120, "min_frames": 6, "long_side": 1280},
        "high": {"target_frames": 300, "min_frames": 8, "long_side": 1920},
    },
    "sfm": {
        # exhaustive_max_images: photo sets up to this size are matched all-pairs, larger ones
        # in name order with loop closure; sequential_overlap: neighbours matched per image;
        # loop_stride: keyframe spacing for loop closure.
        "preview": {"matcher": "auto", "mapper": "auto", "max_num_features": 4096,
                    "exhaustive_max_images": 40, "sequential_overlap": 6, "loop_stride": 5,
                    "min_registered_fraction": 0.5},
        "standard": {"matcher": "auto", "mapper": "auto", "max_num_features": 8192,
                     "exhaustive_max_images": 60, "sequential_overlap": 8, "loop_stride": 6,
                     "min_registered_fraction": 0.5},
        "high": {"matcher": "auto", "mapper": "auto", "max_num_features": 16384,
                 "exhaustive_max_images": 100, "sequential_overlap": 10, "loop_stride": 8,
                 "min_registered_fraction": 0.5},
    },
    "depth": {
        "preview": {"enabled": True, "input_size": 252, "batch_size": 4},
        "standard": {"enabled": True, "input_size": 518, "batch_size": 8},
        "high": {"enabled": True, "input_size": 518, "batch_size": 8},
    },
    "splat": {
        # preview: about 2 min of training on 2 idle CPU cores for the synthetic 40-view scene
        # at 320 px (cap_max bounds the cost per step).
        "preview": {"steps": 1000, "strategy": "default", "sh_degree": 1, "depth_loss": False,
                    "max_long_side": 320, "cap_max": 40_000},
        "standard": {"steps": 7000, "strategy": "default", "sh_degree": 3, "depth_loss": True,
                     "max_long_side": 1280, "cap_max": 1_500_000},
        "high": {"steps": 30000, "strategy": "mcmc", "sh_degree": 3, "depth_loss": True,
                 "max_long_side": 1920, "cap_max": 3_000_000},
    },
    "mesh": {
        "preview": {"enabled": True, "voxel_size": 0.0, "max_long_side": 320},
        "standard": {"enabled": True, "voxel_size": 0.0, "max_long_side": 640},
        "high": {"enabled": True, "voxel_size": 0.0, "max_long_side": 1280},
    },
}

# Request option -> (stage, parameter) it overrides.
OPTION_OVERRIDES: dict[str, tuple[str, str]] = {
    "max_frames": ("frames", "target_frames"),
    "long_side": ("frames", "long_side"),
    "matcher": ("sfm", "matcher"),
    "mapper": ("sfm", "mapper"),
    "depth": ("depth", "enabled"),
    "splat_steps": ("splat", "steps"),
    "splat_strategy": ("splat", "strategy"),
    "sh_degree": ("splat", "sh_degree"),
    "depth_loss": ("splat", "depth_loss"),
    "mesh": ("mesh", "enabled"),
    "mesh_voxel_size": ("mesh", "voxel_size"),
}


def resolve(stage: str, options: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `stage` for normalised `options` (see functions.options)."""
    preset = options.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}")
    params = dict(STAGE_PRESETS[stage][preset])
    for option, (target_stage, param) in OPTION_OVERRIDES.items():
        if target_stage == stage and option in options:
            params[param] = options[option]
    if stage == "depth":
        # The model is part of the parameters: a different model reruns the stage.
        params["model"] = os.environ.get("DEPTH_MODEL", "depth-anything/Depth-Anything-V2-Small-hf")
    params["preset"] = preset
    return params
