"""`scene.spz`: Niantic's compressed Gaussian splat format (version 2 or 3), writer and reader.

The file is a gzip stream of a 16-byte little-endian header
    magic 0x5053474e ("NGSP"), version, number of points (uint32 each),
    SH degree, fractional bits, flags, reserved (uint8 each)
followed by the attributes, each for all points in turn:
    positions  3 x 24-bit signed fixed point (`fractional_bits` fraction bits)
    alphas     uint8, sigmoid(opacity) * 255
    colors     3 x uint8, SH DC * (0.15 * 255) + 127.5
    scales     3 x uint8, (log scale + 10) * 16
    rotations  v2: quaternion x y z as uint8 (w >= 0 implied); v3: "smallest three" in 32 bits
               (2 bits for the index of the largest component, 3 x (sign + 9-bit magnitude))
    sh         per point, coefficient-major with the colour channel inner, uint8 (q - 128) / 128,
               rounded to 5 bits (degree 1) or 4 bits (higher degrees) to compress better.

SPZ stores an RUB coordinate frame (three.js); 3DGS PLY files are RDF. As the reference tools
do, the writer converts RDF -> RUB (y and z flipped: positions, quaternion x y z and the SH
coefficients odd in y or z change sign) and the reader converts back.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

MAGIC = 0x5053474E
HEADER = struct.Struct("<IIIBBBB")
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
SQRT1_2 = float(np.sqrt(0.5))

# RDF <-> RUB: x kept, y and z negated.
FLIP_P = np.array([1.0, -1.0, -1.0], np.float32)
FLIP_Q_XYZ = np.array([1.0, -1.0, -1.0], np.float32)  # (y z, x z, x y) sign products
# Sign of each SH basis (degree 1..3, gsplat/3DGS order) under y -> -y, z -> -z.
FLIP_SH = np.array([-1, -1, 1,  # y, z, x
                    -1, 1, 1, -1, 1,  # xy, yz, 3z^2-1, xz, x^2-y^2
                    -1, 1, -1, -1, 1, -1, 1], np.float32)  # y(3x^2-y^2), xyz, y(5z^2-1), z(5z^2-3), x(5z^2-1), z(x^2-y^2), x(x^2-3y^2)


def _dim_for_degree(degree: int) -> int:
    return (degree + 1) ** 2 - 1


def _degree_for_dim(dim: int) -> int:
    return {0: 0, 3: 1, 8: 2, 15: 3}[dim]


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _fractional_bits(positions: np.ndarray, preferred: int = 12) -> int:
    """12 bits (~0.25 mm in metres) unless the scene is too large for 24-bit fixed point."""
    max_abs = float(np.abs(positions).max()) if positions.size else 0.0
    bits = preferred
    while bits > 0 and max_abs * (1 << bits) >= (1 << 23) - 1:
        bits -= 1
    return bits


def _pack_rotations_v2(q_xyzw: np.ndarray) -> np.ndarray:
    q = q_xyzw / np.linalg.norm(q_xyzw, axis=1, keepdims=True)
    q = np.where(q[:, 3:4] < 0, -q, q)  # q and -q are the same rotation; keep w >= 0
    return _to_u8(q[:, :3] * 127.5 + 127.5)


def _unpack_rotations_v2(r: np.ndarray) -> np.ndarray:
    xyz = r.astype(np.float32) / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(axis=1, keepdims=True)))
    return np.concatenate([xyz, w], axis=1)


def _pack_rotations_v3(q_xyzw: np.ndarray) -> np.ndarray:
    q = q_xyzw / np.linalg.norm(q_xyzw, axis=1, keepdims=True)
    n = q.shape[0]
    largest = np.argmax(np.abs(q), axis=1)
    q = np.where(q[np.arange(n), largest][:, None] < 0, -q, q)  # the largest is then positive
    comp = largest.astype(np.uint32)
    mask = (1 << 9) - 1
    for i in range(4):
        other = largest != i
        neg = (q[:, i] < 0).astype(np.uint32)
        mag = np.floor(mask * (np.abs(q[:, i]) / SQRT1_2) + 0.5).astype(np.uint32)
        comp = np.where(other, (comp << 10) | (neg << 9) | np.minimum(mag, mask), comp)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def _unpack_rotations_v3(r: np.ndarray) -> np.ndarray:
    comp = np.ascontiguousarray(r).view("<u4").reshape(-1).astype(np.uint32)
    n = comp.shape[0]
    largest = (comp >> 30).astype(np.int64)
    mask = (1 << 9) - 1
    q = np.zeros((n, 4), np.float32)
    sum_sq = np.zeros(n, np.float32)
    for i in range(3, -1, -1):
        other = largest != i
        mag = (comp & mask).astype(np.float32)
        neg = ((comp >> 9) & 1).astype(bool)
        val = SQRT1_2 * mag / mask
        val = np.where(neg, -val, val)
        q[:, i] = np.where(other, val, 0.0)
        sum_sq += np.where(other, val * val, 0.0)
        comp = np.where(other, comp >> 10, comp)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - sum_sq))
    return q


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.floor(x * 128.0 + 0.5).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(arrays: dict[str, np.ndarray], version: int = 3, antialiased: bool = False) -> bytes:
    """The uncompressed payload for Gaussians in stored form (means, scales, quats wxyz, opacities, sh0, shN)."""
    if version not in (2, 3):
        raise ValueError("SPZ version must be 2 or 3")
    means = np.asarray(arrays["means"], np.float32)
    n = means.shape[0]
    sh_n = np.asarray(arrays.get("shN", np.zeros((n, 0, 3))), np.float32).reshape(n, -1, 3)
    dim = sh_n.shape[1]
    degree = _degree_for_dim(dim)
    pos = means * FLIP_P
    bits = _fractional_bits(pos)
    fixed = np.round(pos * (1 << bits)).astype(np.int64).reshape(-1)
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=1).astype(np.uint8)
    opac = np.asarray(arrays["opacities"], np.float64).reshape(n)
    alphas = _to_u8(255.0 / (1.0 + np.exp(-opac)))
    colors = _to_u8(np.asarray(arrays["sh0"], np.float32).reshape(n, 3) * (COLOR_SCALE * 255.0) + 127.5)
    scales = _to_u8((np.asarray(arrays["scales"], np.float32).reshape(n, 3) + 10.0) * 16.0)
    wxyz = np.asarray(arrays["quats"], np.float64).reshape(n, 4)
    xyzw = np.concatenate([wxyz[:, 1:] * FLIP_Q_XYZ, wxyz[:, :1]], axis=1)
    rotations = _pack_rotations_v3(xyzw) if version == 3 else _pack_rotations_v2(xyzw)
    sh = sh_n * FLIP_SH[:dim, None]
    sh_q = np.concatenate([_quantize_sh(sh[:, :3], 5), _quantize_sh(sh[:, 3:], 4)], axis=1) if dim else \
        np.zeros((n, 0, 3), np.uint8)
    header = HEADER.pack(MAGIC, version, n, degree, bits, FLAG_ANTIALIASED if antialiased else 0, 0)
    return b"".join([header, positions.tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(),
                     rotations.tobytes(), sh_q.tobytes()])


def write_spz(path: Path, arrays: dict[str, np.ndarray], version: int = 3) -> None:
    Path(path).write_bytes(gzip.compress(encode_spz(arrays, version), compresslevel=9))


def snapshot(arrays: dict[str, np.ndarray], max_gaussians: int) -> bytes:
    """A small SPZ file's bytes of Gaussians in stored form: SH degree 0 and at most
    `max_gaussians` of them, the most opaque (what a viewer shows while training goes on)."""
    n = len(arrays["means"])
    keep = np.arange(n)
    if n > max_gaussians:
        keep = np.sort(np.argpartition(-np.asarray(arrays["opacities"]).reshape(n), max_gaussians - 1)[:max_gaussians])
    small = {k: np.asarray(arrays[k])[keep] for k in ("means", "scales", "quats", "opacities", "sh0")}
    small["shN"] = np.zeros((len(keep), 0, 3), np.float32)
    return gzip.compress(encode_spz(small, 3), compresslevel=6)


def decode_spz(data: bytes) -> dict[str, np.ndarray]:
    """Stored-form arrays (RDF, quats w x y z) from an uncompressed payload; raises ValueError if malformed."""
    if len(data) < HEADER.size:
        raise ValueError("not an SPZ payload: too short")
    magic, version, n, degree, bits, flags, _ = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f"not an SPZ payload: magic {magic:#x}")
    if version not in (2, 3):
        raise ValueError(f"unsupported SPZ version {version}")
    if flags & 0x2:
        raise ValueError("SPZ extensions are not supported by this reader")
    dim = _dim_for_degree(degree)
    rot_bytes = 4 if version >= 3 else 3
    sizes = [n * 9, n, n * 3, n * 3, n * rot_bytes, n * dim * 3]
    if len(data) != HEADER.size + sum(sizes):
        raise ValueError(f"SPZ payload size {len(data)} does not match {n} points of degree {degree}")
    off = HEADER.size
    parts = []
    for s in sizes:
        parts.append(np.frombuffer(data, np.uint8, s, off))
        off += s
    pos_b, alpha_b, color_b, scale_b, rot_b, sh_b = parts
    p = pos_b.reshape(-1, 3).astype(np.int32)
    fixed = p[:, 0] | (p[:, 1] << 8) | (p[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = (fixed.astype(np.float32) / (1 << bits)).reshape(n, 3) * FLIP_P
    a = np.clip(alpha_b.astype(np.float32) / 255.0, 1e-6, 1 - 1e-6)
    rot = rot_b.reshape(n, rot_bytes)
    xyzw = _unpack_rotations_v3(rot) if version >= 3 else _unpack_rotations_v2(rot)
    quats = np.concatenate([xyzw[:, 3:], xyzw[:, :3] * FLIP_Q_XYZ], axis=1)
    sh_n = ((sh_b.reshape(n, dim, 3).astype(np.float32) - 128.0) / 128.0) * FLIP_SH[:dim, None]
    return {
        "means": means.astype(np.float32),
        "opacities": np.log(a / (1 - a)).astype(np.float32),
        "sh0": (((color_b.reshape(n, 3).astype(np.float32) / 255.0) - 0.5) / COLOR_SCALE).reshape(n, 1, 3),
        "scales": (scale_b.reshape(n, 3).astype(np.float32) / 16.0 - 10.0),
        "quats": quats.astype(np.float32),
        "shN": sh_n.astype(np.float32),
        "version": np.array(version),
        "fractional_bits": np.array(bits),
    }


def read_spz(path: Path) -> dict[str, np.ndarray]:
    return decode_spz(gzip.decompress(Path(path).read_bytes()))
