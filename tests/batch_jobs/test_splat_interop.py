"""An independent reader (issue 19): our `point_cloud.ply` and `scene.spz` (and the SPZ snapshots,
the same writer) load in a splat tool we did not write, `@playcanvas/splat-transform` from npm.

scripts/bootstrap.sh installs the version it pins into .cache/splat-transform (node from Debian).
Each file goes through splat-transform's reader and out through its CSV writer (one text row per
Gaussian: x, y, z, rot_0..3, scale_0..2, opacity, f_dc_0..2, f_rest_*), which this test parses
with numpy alone, so no code of ours reads anything back. Compared against the arrays we wrote:

- PLY: the same count, and every value float32-exact (the 3DGS layout in COLMAP/OpenCV axes).
- SPZ: the same count; positions within the spec's 24-bit fixed point, half a step of the
  fractional bits in the file's header (12 here: 0.5 / 4096); splat-transform reads SPZ without
  converting axes, and our SPZ is in the spec's RUB axes, so its x is ours and its y and z are
  ours negated (as are the quaternion's y and z and the SH coefficients odd in y or z); alpha,
  log scales, colours, rotations and SH within the format's 8-bit quantisation.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gaussian_data import random_gaussians

from batch_jobs.gaussians import ply, spz

# Runs an outside tool (splat-transform under Node) on trained outputs: part of `make test`, not of `make check`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFIX = REPO / ".cache" / "splat-transform"
PACKAGE = PREFIX / "node_modules" / "@playcanvas" / "splat-transform"


def pinned_version() -> str:
    """The version scripts/bootstrap.sh installs (one place names it)."""
    text = (REPO / "scripts" / "bootstrap.sh").read_text()
    m = re.search(r"^splat_transform_version=(\S+)$", text, re.M)
    assert m, "scripts/bootstrap.sh pins no splat_transform_version"
    return m.group(1)


@pytest.fixture(scope="module")
def splat_transform() -> list[str]:
    """The command line that runs the pinned splat-transform; skipped when node or the package is absent."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/bootstrap.sh installs nodejs; run `make setup`)")
    if not (PACKAGE / "package.json").exists():
        pytest.skip(f"@playcanvas/splat-transform is not in {PREFIX.relative_to(REPO)} "
                    "(scripts/bootstrap.sh installs it; run `make setup`)")
    installed = json.loads((PACKAGE / "package.json").read_text())["version"]
    assert installed == pinned_version(), f"splat-transform {installed} installed, bootstrap pins {pinned_version()}"
    return [node, str(PACKAGE / "bin" / "cli.mjs")]


def convert_to_csv(cli: list[str], src: Path) -> dict[str, np.ndarray]:
    """splat-transform reads `src` and writes CSV; the columns, parsed here, as float32."""
    out = src.with_name(src.name + ".csv")
    proc = subprocess.run([*cli, "-q", "-w", str(src), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"splat-transform failed on {src.name}:\n{proc.stdout}\n{proc.stderr}"
    with open(out) as f:
        names = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    assert table.shape[1] == len(names), (table.shape, names)
    # JS prints a float32 (widened to double) in the shortest form that reads back as that double.
    return {name: table[:, i].astype(np.float32) for i, name in enumerate(names)}


def stack(cols: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.stack([cols[n] for n in names], axis=1)


def rest_names(k: int) -> list[str]:
    return [f"f_rest_{i}" for i in range(3 * k)]


def trained_gaussians() -> dict[str, np.ndarray]:
    """A real output: our trainer's parameters after a short CPU run on the small synthetic scene
    (20 MCMC steps: relocated and added Gaussians, unnormalised quaternions, learned SH)."""
    from workspace_fixture import SMALL, cached_gt_workspace

    from batch_jobs.gaussians.camera import load_views
    from batch_jobs.gaussians.params import init_params, to_arrays
    from batch_jobs.gaussians.trainer import TrainConfig, train
    from batch_jobs.sparse_model import read_sparse_model

    gt = cached_gt_workspace(SMALL)
    model = read_sparse_model(gt.workspace / "sfm" / "sparse" / "0")
    views = load_views(model, gt.workspace / "sfm" / "images", 120)
    params = init_params(model.points, model.colors, sh_degree=1, init_opacity=0.5, init_scale=0.1)
    train(params, views, TrainConfig(steps=20, sh_degree=1, strategy="mcmc", depth_loss=False, seed=0, opacity_reset=False, cap_max=int(1.2 * len(model.points))),
          scene_scale=model.scene_extent()[1])
    return to_arrays(params)


def rotation_error(q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """1 - |cos| between unit quaternions (q and -q are the same rotation)."""
    a = q0 / np.linalg.norm(q0, axis=1, keepdims=True)
    b = q1 / np.linalg.norm(q1, axis=1, keepdims=True)
    return 1 - np.abs((a * b).sum(axis=1))


def check_ply(cli: list[str], g: dict[str, np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "point_cloud.ply"
    ply.write_ply(path, g)
    cols = convert_to_csv(cli, path)
    n, k = len(g["means"]), g["shN"].shape[1]
    assert len(cols["x"]) == n
    assert np.array_equal(stack(cols, ["x", "y", "z"]), g["means"])  # float32 exact, axes as written
    assert np.array_equal(stack(cols, ["rot_0", "rot_1", "rot_2", "rot_3"]), g["quats"])
    assert np.array_equal(stack(cols, ["scale_0", "scale_1", "scale_2"]), g["scales"])
    assert np.array_equal(cols["opacity"], g["opacities"].reshape(n))
    assert np.array_equal(stack(cols, ["f_dc_0", "f_dc_1", "f_dc_2"]), g["sh0"].reshape(n, 3))
    rest = stack(cols, rest_names(k)) if k else np.zeros((n, 0), np.float32)
    assert np.array_equal(rest, g["shN"].transpose(0, 2, 1).reshape(n, 3 * k))  # channel-major f_rest


def check_spz(cli: list[str], g: dict[str, np.ndarray], tmp_path: Path, version: int) -> None:
    path = tmp_path / "scene.spz"
    spz.write_spz(path, g, version=version)
    # The spec's 16-byte header (read here, not by our reader): the fractional bits set the step.
    magic, ver, count, degree, bits = struct.unpack_from("<IIIBB", gzip.decompress(path.read_bytes()))
    n, k = len(g["means"]), g["shN"].shape[1]
    assert (magic, ver, count, (degree + 1) ** 2 - 1) == (0x5053474E, version, n, k)
    cols = convert_to_csv(cli, path)
    assert len(cols["x"]) == n

    # Positions: 24-bit fixed point with `bits` fractional bits, rounded to nearest: half a step,
    # plus the float32 rounding of the decoded value. RUB: x as ours, y and z negated.
    step = 1.0 / (1 << bits)
    tol = 0.5 * step + float(np.abs(g["means"]).max()) * 2.0**-23
    xyz = stack(cols, ["x", "y", "z"])
    rub = g["means"] * np.array([1, -1, -1], np.float32)
    assert np.abs(xyz - rub).max() <= tol, (np.abs(xyz - rub).max(), tol)
    assert np.abs(xyz[:, 1:] + g["means"][:, 1:]).max() <= tol  # y and z: ours negated ...
    assert np.abs(xyz[:, 1:] - g["means"][:, 1:]).max() > 100 * tol  # ... which is a change, not a no-op

    # Alpha in 1/255 steps (splat-transform's logit clamps alpha to [1e-6, 1 - 1e-6]); log scales
    # in 1/16 steps; colour DC in 1/(0.15 * 255) steps; each rounded to nearest.
    alpha = 1 / (1 + np.exp(-g["opacities"].reshape(n).astype(np.float64)))
    alpha_back = 1 / (1 + np.exp(-cols["opacity"].astype(np.float64)))
    assert np.abs(alpha_back - alpha).max() <= 0.5 / 255 + 1e-5
    # (Values beyond a byte's range are clamped to it: compared with the clamped value.)
    scales = np.clip(g["scales"], -10, 255 / 16 - 10)
    assert np.abs(stack(cols, ["scale_0", "scale_1", "scale_2"]) - scales).max() <= 0.5 / 16 + 1e-5
    dc = np.clip(g["sh0"].reshape(n, 3), -127.5 / (0.15 * 255), 127.5 / (0.15 * 255))
    assert np.abs(stack(cols, ["f_dc_0", "f_dc_1", "f_dc_2"]) - dc).max() <= 0.5 / (0.15 * 255) + 1e-5

    # Rotations, RUB: (w, x, -y, -z). v3 "smallest three" with 9-bit magnitudes; v2 8-bit x y z.
    quats = stack(cols, ["rot_0", "rot_1", "rot_2", "rot_3"])
    assert rotation_error(quats, g["quats"] * np.array([1, 1, -1, -1], np.float32)).max() \
        < (2e-5 if version == 3 else 2e-2)

    # SH rest: 8 bits of (q - 128) / 128, kept to 5 bits in band 1 and 4 bits above (buckets of 8
    # and 16 levels), coefficients odd in y or z negated (RUB); splat-transform's f_rest is
    # channel-major, as in PLY.
    if k:
        flip = spz.FLIP_SH[:k]
        expect = np.clip(g["shN"] * flip[None, :, None], -1, 127 / 128).transpose(0, 2, 1)  # [n, 3, k]
        back = stack(cols, rest_names(k)).reshape(n, 3, k)
        assert np.abs(back[:, :, :3] - expect[:, :, :3]).max() <= 4.5 / 128 + 1e-5
        if k > 3:
            assert np.abs(back[:, :, 3:] - expect[:, :, 3:]).max() <= 8.5 / 128 + 1e-5
    else:
        assert not any(name.startswith("f_rest_") for name in cols)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_splat_transform_reads_our_ply(splat_transform: list[str], tmp_path: Path, degree: int) -> None:
    check_ply(splat_transform, random_gaussians(3000, degree, seed=degree), tmp_path)


@pytest.mark.parametrize(("degree", "version"), [(0, 3), (1, 3), (3, 3), (3, 2)])
def test_splat_transform_reads_our_spz(splat_transform: list[str], tmp_path: Path, degree: int,
                                       version: int) -> None:
    """Degree 0, version 3 is the snapshot's form (`splat_latest`); degree 1..3, version 3 the final scene.spz."""
    check_spz(splat_transform, random_gaussians(3000, degree, seed=10 + degree), tmp_path, version)


def test_splat_transform_reads_a_trained_output(splat_transform: list[str], tmp_path: Path) -> None:
    """The same on parameters our trainer produced (densified, unnormalised quaternions, learned SH)."""
    g = trained_gaussians()
    check_ply(splat_transform, g, tmp_path)
    check_spz(splat_transform, g, tmp_path, 3)
