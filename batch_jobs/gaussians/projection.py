"""3D Gaussians -> 2D on CPU, through gsplat's PyTorch reference functions.

`gsplat.cuda._torch_impl` holds the reference (autograd) versions of what gsplat's CUDA
kernels compute: quaternion + scale -> covariance, the EWA perspective projection with the
0.3-pixel low-pass (eps2d), frustum culling and radii, and spherical harmonics. Using them keeps
the CPU path's maths identical to the CUDA path's; autograd carries the 2D gradients from our
rasterizer back to means, quaternions, scales, opacities and SH coefficients. They are private
to gsplat: this module reaches them through `gsplat_internals`.

Those functions work on every Gaussian; a conservative pre-cull (no gradient needed) first
drops the Gaussians that cannot reach the image, so the reference functions only see the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batch_jobs.gaussians.gsplat_internals import (
    fully_fused_projection,
    quat_scale_to_covar_preci,
    spherical_harmonics,
)

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3


@dataclass
class Projected:
    means2d: torch.Tensor  # [1, N, 2] all Gaussians (the densification strategy reads its grad)
    radii: torch.Tensor  # [1, N, 2] int, 0 where culled
    visible: torch.Tensor  # [V] indices of the Gaussians with radii > 0
    conics: torch.Tensor  # [V, 3]
    depths: torch.Tensor  # [V] camera z
    opacities: torch.Tensor  # [V]
    colors: torch.Tensor  # [V, 3] from SH, clamped at 0 (as gsplat does)


@torch.no_grad()
def may_be_visible(means: torch.Tensor, scales: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                   width: int, height: int) -> torch.Tensor:
    """Indices of Gaussians that can touch the image (a superset of what the projection keeps).

    The projected 2D radius is 3.33 sqrt(lambda_max(J Sigma J^T) + eps2d); with
    ||J||^2 <= (f/z)^2 (1 + (x/z)^2 + (y/z)^2), using the projection's clamped x/z and y/z, and
    lambda_max(Sigma) = max scale^2, the bound below (with 25% slack) is never smaller.
    """
    pc = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    front = (z > NEAR_PLANE) & (z < FAR_PLANE)
    zc = torch.where(front, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rx = (pc[:, 0] / zc).clamp(-(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
    ry = (pc[:, 1] / zc).clamp(-(cy / fy + 0.15 * height / fy), (height - cy) / fy + 0.15 * height / fy)
    s = scales.max(dim=-1).values
    f = torch.maximum(fx, fy)
    radius = 1.25 * 3.33 * torch.sqrt((s * f / zc) ** 2 * (1 + rx * rx + ry * ry) + EPS2D) + 2.0
    u = fx * pc[:, 0] / zc + cx
    v = fy * pc[:, 1] / zc + cy
    keep = front & (u + radius > 0) & (u - radius < width) & (v + radius > 0) & (v - radius < height)
    return torch.nonzero(keep, as_tuple=True)[0]


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
            sh: torch.Tensor, sh_degree: int, viewmat: torch.Tensor, K: torch.Tensor, width: int,
            height: int) -> Projected:
    """Project activated Gaussians (unit quats, positive scales, opacities in 0..1) into one view."""
    n = means.shape[0]
    cand = may_be_visible(means, scales, viewmat, K, width, height)
    m, q, s = means[cand], quats[cand], scales[cand]
    covars, _ = quat_scale_to_covar_preci(q, s, compute_covar=True, compute_preci=False)
    radii_c, means2d_c, depths_c, conics_c, _ = fully_fused_projection(
        m, covars, viewmat[None], K[None], width, height, eps2d=EPS2D, near_plane=NEAR_PLANE,
        far_plane=FAR_PLANE)
    vis_c = torch.nonzero((radii_c[0] > 0).all(dim=-1), as_tuple=True)[0]
    visible = cand[vis_c]
    # Full-size [1, N, 2] tensors, as gsplat returns them (what the strategies index by Gaussian).
    means2d = means2d_c.new_zeros((1, n, 2)).index_put((torch.zeros_like(cand), cand), means2d_c[0])
    radii = radii_c.new_zeros((1, n, 2))
    radii[0, cand] = radii_c[0]
    campos = torch.linalg.inv(viewmat)[:3, 3]
    dirs = means[visible] - campos
    colors = spherical_harmonics(sh_degree, dirs, sh[visible])
    colors = torch.clamp_min(colors + 0.5, 0.0)
    return Projected(means2d=means2d, radii=radii, visible=visible, conics=conics_c[0, vis_c],
                     depths=depths_c[0, vis_c], opacities=opacities[visible], colors=colors)
