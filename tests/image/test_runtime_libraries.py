"""Every shared library the job image's wheels load is there at run time.

For each ELF `.so` of every distribution the image installs (batch_jobs/image_requirements.py
and what those require), each DT_NEEDED entry must be bundled in a wheel of the image, part of
the base image (glibc, the CUDA runtime image, the driver Batch mounts), or in a Debian/Ubuntu
package the Dockerfile's runtime stage installs (RUNTIME_LIBRARIES), by the table below.

The CPU builds installed here stand for their family; the GPU builds the image swaps in
(pycolmap-cuda12) are read from their wheels, which scripts/bootstrap.sh downloads into
.cache/image-wheels. Two parts are only built in the image and cannot be read here: torch's CUDA
libraries (its nvidia-* wheels and the CUDA runtime image) and gsplat's compiled extension
(it links torch and the CUDA runtime).
"""

from __future__ import annotations

import importlib.metadata
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from packaging.requirements import Requirement

from batch_jobs import image_requirements

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "batch_jobs" / "Dockerfile"
GPU_WHEELS = REPO / ".cache" / "image-wheels"

# soname -> the Ubuntu 22.04 package that ships it (packages.ubuntu.com, jammy).
PACKAGE_OF = {
    "libgomp.so.1": "libgomp1",
    "libgomp.so.1.0.0": "libgomp1",  # the file libgomp.so.1 points to
    "libusb-1.0.so.0": "libusb-1.0-0",
    "libudev.so.1": "libudev1",
    "libidn2.so.0": "libidn2-0",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libX11.so.6": "libx11-6",
    "libXext.so.6": "libxext6",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libxcb.so.1": "libxcb1",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libexpat.so.1": "libexpat1",
    "libffi.so.8": "libffi8",
    "libbz2.so.1.0": "libbz2-1.0",
    "liblzma.so.5": "liblzma5",
    "libtbb.so.12": "libtbb12",
}

# In every image built FROM nvidia/cuda:*-cudnn-runtime-ubuntu22.04: glibc and the C++ runtime
# (Ubuntu base), zlib (dpkg needs it), the CUDA runtime libraries and cuDNN of the runtime image,
# and the driver libraries Batch's GPU driver installation exposes to the container.
BASE_IMAGE = {
    "libc.so.6", "libm.so.6", "libmvec.so.1", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
    "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1", "libz.so.1",
    "libcudart.so.12", "libcurand.so.10", "libcublas.so.12", "libcublasLt.so.12", "libcufft.so.11",
    "libcusparse.so.12", "libcusolver.so.11", "libnvrtc.so.12", "libnvJitLink.so.12", "libnccl.so.2",
    "libcudnn.so.9", "libcuda.so.1", "libnvidia-ml.so.1",
}

# Libraries a package loads only for an optional feature the image does not use.
OPTIONAL = {
    "open3d/open3d_tf_ops.so": "open3d's TensorFlow ops, loaded only by `import open3d.ml.tf` (no TensorFlow here)",
    "numba/np/ufunc/tbbpool": "numba's TBB threading layer; numba falls back to OpenMP or its workqueue",
}

_ELF_NAME = re.compile(r"\.so(\.\w+)*$")  # libcrypto-5409cd36.so.1.1.1k too


@dataclass(frozen=True)
class SharedObject:
    dist: str
    path: str  # inside the distribution
    needed: tuple[str, ...]


def _needed(stream) -> tuple[str, ...]:
    elf = ELFFile(stream)
    return tuple(tag.needed for sec in elf.iter_sections() if isinstance(sec, DynamicSection)
                 for tag in sec.iter_tags() if tag.entry.d_tag == "DT_NEEDED")


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def installed_objects(dist: importlib.metadata.Distribution) -> list[SharedObject]:
    out = []
    for f in dist.files or []:
        if not _ELF_NAME.search(f.name):
            continue
        path = Path(dist.locate_file(f))
        if path.is_file() and _is_elf(path):
            with path.open("rb") as stream:
                out.append(SharedObject(dist.metadata["Name"], str(f), _needed(stream)))
    return out


def wheel_objects(wheel: Path, tmp: Path) -> list[SharedObject]:
    out = []
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if _ELF_NAME.search(name):
                target = tmp / wheel.name / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
                if _is_elf(target):
                    with target.open("rb") as stream:
                        out.append(SharedObject(wheel.name.split("-")[0], name, _needed(stream)))
    return out


def image_distributions() -> list[importlib.metadata.Distribution]:
    """The installed distributions the image has too: its requirements (the separately installed
    torch and gsplat with gsplat's build dependencies included) and theirs, recursively, less the
    CPU builds it replaces."""
    names = [Requirement(r).name for r in image_requirements.requirements()]
    todo = [*names, *image_requirements.SEPARATE, "jaxtyping", "rich"]
    replaced = {image_requirements.canonical(cpu) for cpu in image_requirements.GPU_BUILDS}
    seen: dict[str, importlib.metadata.Distribution] = {}
    while todo:
        name = image_requirements.canonical(todo.pop())
        if name in seen or name in replaced:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a GPU build's own requirement (cuda-toolkit): in the image, not here
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def runtime_packages(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The packages of the runtime stage's RUNTIME_LIBRARIES (and that stage installs them)."""
    text = dockerfile.read_text()
    runtime = text[text.index(" AS runtime"):]
    m = re.search(r'^ARG RUNTIME_LIBRARIES="([^"]*)"', runtime, re.M)
    assert m, "the runtime stage declares no RUNTIME_LIBRARIES"
    assert re.search(r"apt-get install [^\n]*\$\{RUNTIME_LIBRARIES\}", runtime), "RUNTIME_LIBRARIES not installed"
    return m.group(1).split()


def unresolved(objects: Iterable[SharedObject], packages: Iterable[str]) -> list[str]:
    """One line per DT_NEEDED entry nothing in the image provides."""
    objects = list(objects)
    packages = set(packages)
    bundled = {Path(o.path).name for o in objects}
    out = []
    for o in objects:
        if any(key in o.path for key in OPTIONAL):
            continue
        for soname in o.needed:
            if soname in bundled or soname in BASE_IMAGE:
                continue
            package = PACKAGE_OF.get(soname)
            if package is None:
                out.append(f"{o.dist}: {o.path} needs {soname}: not bundled, not in the base image, no package known")
            elif package not in packages:
                out.append(f"{o.dist}: {o.path} needs {soname}: the runtime stage does not install {package}")
    return sorted(set(out))


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> list[SharedObject]:
    tmp = tmp_path_factory.mktemp("wheels")
    found = [o for d in image_distributions() for o in installed_objects(d)]
    for spec in image_requirements.gpu_wheels():
        name, version = spec.split("==")
        wheels = sorted(GPU_WHEELS.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        assert wheels, f"{spec} is not in {GPU_WHEELS}: run scripts/bootstrap.sh (pip download --no-deps {spec})"
        found += wheel_objects(wheels[-1], tmp)
    return found


def test_the_scan_reads_the_compiled_wheels(objects):
    dists = {o.dist.lower() for o in objects}
    assert {"torch", "open3d_cpu", "pycolmap_cuda12", "opencv-python-headless", "av"} <= {
        d.replace("-", "_") if d.startswith(("open3d", "pycolmap")) else d for d in dists}, dists
    core = [o for o in objects if o.dist == "pycolmap_cuda12" and "_core" in o.path]
    assert core and "libSM.so.6" in core[0].needed  # what the CUDA build of pycolmap needs


def test_every_needed_library_is_in_the_image(objects):
    missing = unresolved(objects, runtime_packages())
    assert not missing, "\n".join(missing)


def test_every_runtime_package_is_needed(objects):
    needed = {PACKAGE_OF[s] for o in objects for s in o.needed if s in PACKAGE_OF
              and Path(s).name not in {Path(x.path).name for x in objects}}
    extra = set(runtime_packages()) - needed
    assert not extra, f"RUNTIME_LIBRARIES installs packages no wheel needs: {extra}"


def test_a_missing_package_is_found(objects):
    packages = [p for p in runtime_packages() if p != "libsm6"]
    missing = "\n".join(unresolved(objects, packages))
    assert "pycolmap/_core" in missing and "needs libSM.so.6: the runtime stage does not install libsm6" in missing


def test_the_dockerfile_imports_every_heavy_package():
    text = DOCKERFILE.read_text()
    runtime = text[text.index(" AS runtime"):]
    assert 'RUN python -c "import torch, pycolmap, open3d, gsplat, transformers"' in runtime
