"""The Gaussians' trainable parameters, their activations, and their initialisation from SfM points.

Stored as in 3DGS / gsplat (what the optimisers and the densification strategies expect): a
`torch.nn.ParameterDict` with `means` [N, 3], `scales` [N, 3] (log), `quats` [N, 4] (w x y z,
unnormalised), `opacities` [N] (logit), `sh0` [N, 1, 3] (DC spherical-harmonics coefficient)
and, when the SH degree is above 0, `shN` [N, (degree+1)^2 - 1, 3].
"""

from __future__ import annotations

import math

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # the degree-0 SH basis: colour = SH_C0 * sh0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def knn_rms_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """RMS distance of every point to its `k` nearest other points (chunked: O(chunk x N) memory)."""
    n = points.shape[0]
    k = max(1, min(k, n - 1))
    out = torch.empty(n, dtype=points.dtype, device=points.device)
    for s in range(0, n, chunk):
        d2 = torch.cdist(points[s:s + chunk], points).square()
        nearest = torch.topk(d2, k + 1, dim=1, largest=False).values[:, 1:]  # drop the point itself
        out[s:s + chunk] = nearest.mean(dim=1).sqrt()
    return out


def init_params(points: np.ndarray, colors: np.ndarray, sh_degree: int, *, init_opacity: float = 0.1,
                init_scale: float = 1.0, max_scale_factor: float = 2.0, seed: int = 0,
                device: str = "cpu") -> torch.nn.ParameterDict:
    """One Gaussian per SfM point: its colour as SH DC, isotropic scale from its neighbours' distance
    (the RMS distance to the 3 nearest, at most `max_scale_factor` times the median of those)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    rgb = torch.as_tensor(np.asarray(colors), dtype=torch.float32) / 255.0
    n = means.shape[0]
    if n == 0:
        raise ValueError("no points to initialise Gaussians from")
    dist = knn_rms_distance(means) if n > 1 else torch.ones(1)
    med = float(dist[dist > 0].median()) if (dist > 0).any() else 1e-3
    # Isolated points (sparse texture, stray matches) would start as huge, half-transparent
    # splats that smear over empty space such as the sky, and training keeps them there:
    # cap the start at twice the typical spacing.
    dist = dist.clamp(min=med * 1e-2, max=med * max_scale_factor)
    scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
    quats = torch.rand((n, 4), generator=g)  # random orientations, as gsplat's trainer starts
    opacities = torch.full((n,), math.log(init_opacity / (1 - init_opacity)))
    sh0 = rgb_to_sh0(rgb)[:, None, :]
    params = {"means": means, "scales": scales, "quats": quats, "opacities": opacities, "sh0": sh0}
    if sh_degree > 0:
        params["shN"] = torch.zeros((n, num_sh_bases(sh_degree) - 1, 3))
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device)) for k, v in params.items()})


def sh_coeffs(params: torch.nn.ParameterDict) -> torch.Tensor:
    """[N, K, 3]: DC and higher SH bands together."""
    if "shN" in params:
        return torch.cat([params["sh0"], params["shN"]], dim=1)
    return params["sh0"]


def sh_degree_of(params: torch.nn.ParameterDict) -> int:
    k = 1 + (params["shN"].shape[1] if "shN" in params else 0)
    return round(math.sqrt(k)) - 1


def activated(params: torch.nn.ParameterDict) -> dict[str, torch.Tensor]:
    """means, unit quats, scales (> 0), opacities (0..1), SH coefficients: what a renderer takes."""
    return {
        "means": params["means"],
        "quats": torch.nn.functional.normalize(params["quats"], dim=-1),
        "scales": torch.exp(params["scales"]),
        "opacities": torch.sigmoid(params["opacities"]),
        "sh": sh_coeffs(params),
    }


def from_arrays(arrays: dict[str, np.ndarray], device: str = "cpu") -> torch.nn.ParameterDict:
    """Parameters from exported arrays (ply.read_ply / spz.read_spz), for rendering a saved scene."""
    out = {k: torch.as_tensor(np.ascontiguousarray(arrays[k]), dtype=torch.float32)
           for k in ("means", "scales", "quats", "opacities", "sh0")}
    if arrays.get("shN") is not None and arrays["shN"].shape[1] > 0:
        out["shN"] = torch.as_tensor(np.ascontiguousarray(arrays["shN"]), dtype=torch.float32)
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device), requires_grad=False) for k, v in out.items()})


def to_arrays(params: torch.nn.ParameterDict) -> dict[str, np.ndarray]:
    """numpy copies, in the stored (pre-activation) form."""
    out = {k: params[k].detach().float().cpu().numpy() for k in ("means", "scales", "quats", "opacities", "sh0")}
    out["shN"] = (params["shN"].detach().float().cpu().numpy() if "shN" in params
                  else np.zeros((out["means"].shape[0], 0, 3), np.float32))
    return out
