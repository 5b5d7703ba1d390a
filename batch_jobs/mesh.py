"""Stage `mesh`: a coloured triangle mesh from the trained splats.

Reads `splat/point_cloud.ply` and the SfM views (`sfm/sparse/0`, `sfm/images/`); renders the
Gaussians' expected depth and opacity at every registered camera (`max_long_side` pixels),
keeps the pixels the splats cover solidly, fuses those depths with the photos' colours into a
TSDF (open3d), extracts the surface, drops small floating components and writes
`mesh/mesh.ply`, `mesh/mesh.glb` and `mesh/report.json` (vertex/face counts, voxel size,
timings). The voxel size is automatic (a few pixels' footprint at the median SfM depth)
unless `voxel_size` is given (SfM units).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from batch_jobs.errors import StageError
from batch_jobs.runner import StageContext
from batch_jobs.sparse_model import SparseModel, read_sparse_model

VERSION = 1

EMPTY_MESH = "EMPTY_MESH"
ALPHA_LEVELS = (0.5, 0.3, 0.15, 0.05)  # opacity a pixel needs for its depth to be fused: the
# first level that covers MIN_COVERAGE of the sampled views (a short or sparse training leaves
# the splats faint; a background pixel stays near 0 at every level)
MIN_COVERAGE = 0.25
EDGE_REL = 0.1  # a relative depth jump above this to a neighbour marks a depth edge: not fused
MIN_VIEWS = 1.0  # rendered depths agree across views by construction: one view is support enough


def median_depth(model: SparseModel) -> float:
    zs = [(model.observed(v)[1][:, 2]) for v in model.views]
    z = np.concatenate(zs) if zs else np.zeros(0)
    z = z[z > 0]
    return float(np.median(z)) if z.size else 1.0


def depth_edges(depth: np.ndarray, rel: float = EDGE_REL) -> np.ndarray:
    """Pixels next to a depth discontinuity (relative jump > `rel` to a 4-neighbour)."""
    edge = np.zeros(depth.shape, bool)
    d = depth
    for axis in (0, 1):
        diff = np.abs(np.diff(d, axis=axis))
        scale = np.minimum(np.delete(d, -1, axis=axis), np.delete(d, 0, axis=axis))
        jump = diff > rel * np.maximum(scale, 1e-9)
        if axis == 0:
            edge[:-1] |= jump
            edge[1:] |= jump
        else:
            edge[:, :-1] |= jump
            edge[:, 1:] |= jump
    return edge


def choose_alpha_threshold(alphas: list[np.ndarray]) -> float:
    """The highest of ALPHA_LEVELS at which the rendered opacity covers MIN_COVERAGE of the views."""
    for level in ALPHA_LEVELS:
        if alphas and float(np.mean([(a >= level).mean() for a in alphas])) >= MIN_COVERAGE:
            return level
    return ALPHA_LEVELS[-1]


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from batch_jobs import tsdf
    from batch_jobs.gaussians import ply
    from batch_jobs.gaussians.camera import load_image, view_from_sparse
    from batch_jobs.gaussians.params import from_arrays, sh_degree_of
    from batch_jobs.gaussians.render import render

    p = ctx.params
    if not p.get("enabled", True):
        ctx.progress.update(1.0, "mesh disabled by the request options")
        (ctx.out_dir / "report.json").write_text(json.dumps({"enabled": False}))
        return {"enabled": False}

    sfm_dir = ctx.input_dir("sfm")
    splat_dir = ctx.input_dir("splat")
    with ctx.timed("load"):
        model = read_sparse_model(sfm_dir / "sparse" / "0")
        if not (splat_dir / "point_cloud.ply").exists():
            raise StageError(EMPTY_MESH, "splat/point_cloud.ply is missing")
        params = from_arrays(ply.read_ply(splat_dir / "point_cloud.ply"), device=ctx.device)
    sh_degree = sh_degree_of(params)
    views = [view_from_sparse(sv, int(p.get("max_long_side", 0))) for sv in model.views]

    _, extent = model.scene_extent()
    zmed = median_depth(model)
    focal = float(np.mean([float(v.K[0, 0]) for v in views]))
    voxel = float(p.get("voxel_size") or 0.0) or tsdf.auto_voxel_size(zmed, focal, extent)
    depth_trunc = 4.0 * zmed
    covered = []

    def rendered(v: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = render(params, v, sh_degree, with_depth=True)
        return (out.depth.detach().cpu().numpy().astype(np.float32),
                out.alpha[..., 0].detach().cpu().numpy())

    with ctx.timed("choose_alpha"):
        sample = [rendered(v)[1] for v in views[:: max(1, len(views) // 8)]]
        min_alpha = choose_alpha_threshold(sample)

    def frames() -> Iterator[tsdf.DepthFrame]:
        for i, (sv, v) in enumerate(zip(model.views, views, strict=True)):
            depth, alpha = rendered(v)
            keep = (alpha >= min_alpha) & (depth > 0) & ~depth_edges(depth)
            covered.append(float(keep.mean()))
            color = (load_image(sfm_dir / "images" / sv.file, v.width, v.height).numpy() * 255 + 0.5).astype(np.uint8)
            ctx.progress.update(0.05 + 0.75 * (i + 1) / len(views), f"fusing view {i + 1}/{len(views)}")
            yield tsdf.DepthFrame(depth=np.where(keep, depth, 0.0).astype(np.float32), color=color,
                                  K=v.K.numpy().astype(np.float64), viewmat=v.viewmat.numpy().astype(np.float64))

    with ctx.timed("render_fuse_extract"):
        mesh = tsdf.fuse(frames(), voxel, depth_trunc, min_weight=MIN_VIEWS)
    ctx.progress.update(0.85, "cleaning the surface")
    with ctx.timed("clean"):
        cleanup = tsdf.clean_mesh(mesh)
    if len(mesh.triangles) == 0:
        raise StageError(EMPTY_MESH, "the fused depth maps gave no surface (the splats cover too little)")
    mesh.compute_vertex_normals()
    ctx.progress.update(0.95, "writing mesh.ply and mesh.glb")
    with ctx.timed("export"):
        tsdf.write_mesh(mesh, ctx.out_dir / "mesh.ply", ctx.out_dir / "mesh.glb")

    bbox = mesh.get_axis_aligned_bounding_box()
    metrics = {
        "enabled": True,
        "vertices": len(mesh.vertices),
        "faces": len(mesh.triangles),
        "voxel_size": round(voxel, 6),
        "views": len(views),
        "device": ctx.device,
    }
    report = {**metrics, **cleanup, "depth_source": "splat expected depth (no depth edges)", "alpha_threshold": min_alpha,
              "median_sfm_depth": round(zmed, 6), "depth_trunc": round(depth_trunc, 6),
              "mean_covered_fraction": round(float(np.mean(covered)), 4) if covered else 0.0,
              "bbox_min": np.asarray(bbox.min_bound).round(6).tolist(),
              "bbox_max": np.asarray(bbox.max_bound).round(6).tolist(),
              "timings": dict(ctx.timings)}
    (ctx.out_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    return metrics
