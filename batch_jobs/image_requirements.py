"""What pip installs into the Batch job image (batch_jobs/Dockerfile), from pyproject.toml and
constraints.txt, so the image never drifts from the package and its tested pins:

- the base dependencies (Cloud Storage, Firestore) and the `jobs` extra;
- with the CUDA build of pycolmap in place of the CPU one, at the version constraints.txt pins
  for pycolmap (SIFT extraction and matching on the GPU where the VM has one);
- without torch (installed first, the CUDA wheel from the PyTorch index) and gsplat (compiled
  from source against it).

open3d stays the CPU build the tests use: the TSDF fusion runs on the CPU device
(batch_jobs/mesh/tsdf.py).

`python batch_jobs/image_requirements.py` prints the requirement lines; `--gpu-wheels` prints
only the swapped-in GPU builds (tests/image downloads them to check their libraries).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# CPU distribution in the `jobs` extra -> the GPU build's distribution (same version).
GPU_BUILDS = {"pycolmap": "pycolmap-cuda12"}
# Installed by their own Dockerfile steps.
SEPARATE = {"torch", "gsplat"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    """{distribution: version} of every `name==version` line."""
    out = {}
    for line in constraints.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def gpu_wheels(constraints: Path = REPO / "constraints.txt") -> list[str]:
    """The GPU builds the image swaps in, pinned: ["pycolmap-cuda12==4.2.1"]."""
    pins = pinned_versions(constraints)
    return [f"{gpu}=={pins[canonical(cpu)]}" for cpu, gpu in GPU_BUILDS.items()]


def requirements(pyproject: Path = REPO / "pyproject.toml", constraints: Path = REPO / "constraints.txt") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    gpu = dict(zip(GPU_BUILDS, gpu_wheels(constraints), strict=True))
    out = []
    for dep in project["dependencies"] + project["optional-dependencies"]["jobs"]:
        m = _NAME.match(dep)
        name = canonical(m.group(1)) if m else ""
        if name in SEPARATE:
            continue
        out.append(gpu.get(name, dep))
    return out


if __name__ == "__main__":
    print("\n".join(gpu_wheels() if "--gpu-wheels" in sys.argv[1:] else requirements()))
