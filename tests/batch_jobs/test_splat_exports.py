"""point_cloud.ply (standard 3DGS layout) and scene.spz (Niantic SPZ v2/v3): written, read back."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from gaussian_data import random_gaussians

from batch_jobs.gaussians import ply, spz


def _rot_err(q0: np.ndarray, q1: np.ndarray) -> float:
    a = q0 / np.linalg.norm(q0, axis=1, keepdims=True)
    b = q1 / np.linalg.norm(q1, axis=1, keepdims=True)
    return float((1 - np.abs((a * b).sum(axis=1))).max())  # q and -q are the same rotation


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_and_standard_layout(tmp_path: Path, degree: int) -> None:
    g = random_gaussians(degree=degree)
    path = tmp_path / "point_cloud.ply"
    ply.write_ply(path, g)
    header = path.read_bytes().split(b"end_header\n", 1)[0].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 500"]
    props = [line.split()[-1] for line in header if line.startswith("property float ")]
    k = (degree + 1) ** 2 - 1
    assert props == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(3 * k)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert len(props) == len(header) - 3  # every property is a float, nothing else in the header
    back = ply.read_ply(path)
    for key, value in g.items():
        assert np.array_equal(back[key], value), key
    # f_rest is channel-major: f_rest_{c*k + j} is coefficient j of channel c (what viewers expect).
    if k:
        from plyfile import PlyData

        v = PlyData.read(str(path))["vertex"]
        assert np.array_equal(v[f"f_rest_{1 * k + 2}"], g["shN"][:, 2, 1])


@pytest.mark.parametrize("version", [2, 3])
def test_spz_round_trip(tmp_path: Path, version: int) -> None:
    g = random_gaussians(n=2000, degree=3, seed=version)
    path = tmp_path / "scene.spz"
    spz.write_spz(path, g, version=version)
    raw = gzip.decompress(path.read_bytes())
    magic, ver, n, degree, bits, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, ver, n, degree, bits, flags, reserved) == (0x5053474E, version, 2000, 3, 12, 0, 0)
    rot_bytes = 3 if version == 2 else 4
    assert len(raw) == 16 + 2000 * (9 + 1 + 3 + 3 + rot_bytes + 45)
    back = spz.read_spz(path)
    assert np.abs(back["means"] - g["means"]).max() <= 0.5 / 4096 + 1e-6  # 12 fractional bits
    assert np.abs(back["scales"] - g["scales"]).max() <= 1 / 32 + 1e-6  # 1/16 steps
    alpha = 1 / (1 + np.exp(-g["opacities"]))
    assert np.abs(1 / (1 + np.exp(-back["opacities"])) - alpha).max() <= 0.5 / 255 + 1e-4
    assert np.abs(back["sh0"] - g["sh0"]).max() <= 0.5 / (0.15 * 255) + 1e-4
    assert np.abs(back["shN"][:, :3] - g["shN"][:, :3]).max() <= 4.5 / 128 + 1e-4  # 5-bit band 1 (8-level buckets)
    assert np.abs(back["shN"][:, 3:] - g["shN"][:, 3:]).max() <= 8.5 / 128 + 1e-4  # 4-bit higher bands (16-level buckets)
    assert _rot_err(back["quats"], g["quats"]) < (2e-2 if version == 2 else 2e-5)


def test_spz_stores_rub_coordinates(tmp_path: Path) -> None:
    """As the reference tools do: PLY's RDF frame becomes RUB in the file (y and z negated)."""
    g = random_gaussians(n=1, degree=1)
    g["means"] = np.array([[1.0, 2.0, 3.0]], np.float32)
    g["shN"][:] = 0
    g["shN"][0, 0, 0] = 0.5  # the y-odd band-1 coefficient: its sign flips with y
    raw = spz.encode_spz(g, version=3)
    fixed = np.frombuffer(raw[16:25], np.uint8).reshape(3, 3).astype(np.int32)
    vals = fixed[:, 0] | (fixed[:, 1] << 8) | (fixed[:, 2] << 16)
    vals = np.where(vals & 0x800000, vals - (1 << 24), vals) / 4096
    assert vals.tolist() == [1.0, -2.0, -3.0]
    sh_byte = raw[16 + 9 + 1 + 3 + 3 + 4]
    assert sh_byte < 128  # stored negative
    back = spz.decode_spz(raw)
    assert back["means"].tolist() == [[1.0, 2.0, 3.0]] and back["shN"][0, 0, 0] == pytest.approx(0.5, abs=4 / 128)


def test_spz_is_much_smaller_than_ply(tmp_path: Path) -> None:
    g = random_gaussians(n=5000, degree=3)
    ply.write_ply(tmp_path / "a.ply", g)
    spz.write_spz(tmp_path / "a.spz", g)
    assert (tmp_path / "a.spz").stat().st_size * 4 < (tmp_path / "a.ply").stat().st_size


def test_spz_reader_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="magic"):
        spz.decode_spz(b"\0" * 64)
    payload = spz.encode_spz(random_gaussians(n=3, degree=1))
    with pytest.raises(ValueError, match="size"):
        spz.decode_spz(payload[:-1])
