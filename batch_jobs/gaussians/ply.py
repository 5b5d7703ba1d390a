"""`point_cloud.ply` in the standard 3D Gaussian Splatting layout (what the common viewers load).

One `vertex` element, binary little endian, every property a float32, in this order:
x y z, nx ny nz (zeros), f_dc_0..2 (SH DC), f_rest_0.. (the higher SH bands, channel-major:
all of red's coefficients, then green's, then blue's), opacity (logit), scale_0..2 (log),
rot_0..3 (quaternion w x y z). No other elements and no comments, so that strict readers
(the spz tools read `element vertex` right after `format`) accept it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def property_names(n_rest_coeffs: int) -> list[str]:
    """Property order for `n_rest_coeffs` SH coefficients per channel beyond the DC (0, 3, 8, 15)."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * n_rest_coeffs)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write Gaussians given in stored form (params.to_arrays: means, scales, quats, opacities, sh0, shN)."""
    means = np.asarray(arrays["means"], np.float32)
    n = means.shape[0]
    sh_n = np.asarray(arrays.get("shN", np.zeros((n, 0, 3))), np.float32)
    k = sh_n.shape[1]
    cols = [means, np.zeros((n, 3), np.float32), np.asarray(arrays["sh0"], np.float32).reshape(n, 3),
            sh_n.transpose(0, 2, 1).reshape(n, 3 * k), np.asarray(arrays["opacities"], np.float32).reshape(n, 1),
            np.asarray(arrays["scales"], np.float32).reshape(n, 3), np.asarray(arrays["quats"], np.float32).reshape(n, 4)]
    data = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype="<f4")
    names = property_names(k)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n" \
        + "".join(f"property float {name}\n" for name in names) + "end_header\n"
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())


def read_ply(path: Path) -> dict[str, np.ndarray]:
    """Read a 3DGS PLY (ours or another tool's, through plyfile) into the stored form."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    n = v.count
    rest = sorted((nm for nm in names if nm.startswith("f_rest_")), key=lambda s: int(s.rsplit("_", 1)[1]))
    k = len(rest) // 3
    sh_n = (np.stack([np.asarray(v[nm], np.float32) for nm in rest], axis=1).reshape(n, 3, k).transpose(0, 2, 1)
            if k else np.zeros((n, 0, 3), np.float32))

    def stack(keys: list[str]) -> np.ndarray:
        return np.stack([np.asarray(v[key], np.float32) for key in keys], axis=1)

    return {
        "means": stack(["x", "y", "z"]),
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": np.ascontiguousarray(sh_n),
        "opacities": np.asarray(v["opacity"], np.float32),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
    }
