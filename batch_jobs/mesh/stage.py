"""Stage `mesh`: a coloured triangle mesh from the trained splats.

Reads `splat/point_cloud.ply` and the SfM views (`sfm/sparse/0`, `sfm/images/`); renders the
Gaussians' expected depth and opacity at every registered camera (`max_long_side` pixels),
keeps the pixels the splats cover solidly, fuses those depths with the photos' colours into a
TSDF (open3d), extracts the surface, drops small floating components and writes
`mesh/mesh.ply`, `mesh/mesh.glb` and `mesh/report.json` (vertex/face counts, the TSDF
parameters of each try, timings).

The TSDF parameters come from the scene (tsdf.scene_params): the geometry's size from the
opaque splats (the cameras may stand far from it), the voxel from a few pixels' footprint at the
median rendered depth (unless `voxel_size` is given, SfM units), the depth range from the
rendered depths' median and 90th percentile, the block capacity from the geometry's size. When
nothing can be fused or no surface comes out, it tries once more with looser parameters; then it
fails with EMPTY_MESH naming both tries. A `voxel_size` over 1/8 of the geometry is bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from batch_jobs.errors import StageError
from batch_jobs.runner import StageContext
from batch_jobs.sparse_model import SparseModel, read_sparse_model

VERSION = 2  # 2: TSDF parameters from the scene, a second looser try

EMPTY_MESH = "EMPTY_MESH"
VOXEL_TOO_LARGE = "mesh_voxel_too_large"  # a given voxel_size leaves the scene only a few voxels across
MIN_VOXELS_ACROSS = 8
ALPHA_LEVELS = (0.5, 0.3, 0.15, 0.05)  # opacity a pixel needs for its depth to be fused: the
# first level that covers MIN_COVERAGE of the sampled views (a short or sparse training leaves
# the splats faint; a background pixel stays near 0 at every level)
MIN_COVERAGE = 0.25
EDGE_REL = 0.1  # a relative depth jump above this to a neighbour marks a depth edge: not fused
MIN_VIEWS = 1.0  # rendered depths agree across views by construction: one view is support enough
log = logging.getLogger("batch_jobs.mesh.stage")


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

    from batch_jobs.gaussians import ply
    from batch_jobs.gaussians.camera import load_image, view_from_sparse
    from batch_jobs.gaussians.params import from_arrays, sh_degree_of
    from batch_jobs.gaussians.render import render
    from batch_jobs.mesh import tsdf

    p = ctx.params
    if not p["enabled"]:
        ctx.progress.update(1.0, "mesh disabled by the request options")
        ctx.write_report({"enabled": False})
        return {"enabled": False}

    sfm_dir = ctx.input_dir("sfm")
    splat_dir = ctx.input_dir("splat")
    with ctx.timed("load"):
        model = read_sparse_model(sfm_dir / "sparse" / "0")
        if not (splat_dir / "point_cloud.ply").exists():
            raise StageError(EMPTY_MESH, "splat/point_cloud.ply is missing")
        params = from_arrays(ply.read_ply(splat_dir / "point_cloud.ply"), device=ctx.device)
    sh_degree = sh_degree_of(params)
    views = [view_from_sparse(sv, int(p["max_long_side"])) for sv in model.views]

    _, camera_extent = model.scene_extent()
    # The surface lives where the opaque splats are; the cameras may stand far from it.
    opaque = params["opacities"].detach().cpu().numpy().reshape(-1) > 0.0  # logit 0: opacity 0.5
    means = params["means"].detach().cpu().numpy()
    extent = tsdf.geometry_extent(means[opaque] if opaque.sum() >= 2 else means) or camera_extent
    focal = float(np.mean([float(v.K[0, 0]) for v in views]))
    voxel_option = float(p["voxel_size"] or 0.0)
    if voxel_option > extent / MIN_VOXELS_ACROSS:
        raise StageError(VOXEL_TOO_LARGE, f"voxel_size {voxel_option:g} is too large for this scene: its geometry "
                         f"spans {extent:.4g} SfM units, so a voxel must be at most 1/{MIN_VOXELS_ACROSS} of that "
                         f"({extent / MIN_VOXELS_ACROSS:.4g}); use 0 for automatic")
    covered: list[float] = []

    def rendered(v: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = render(params, v, sh_degree, with_depth=True)
        assert out.depth is not None  # rendered with_depth
        return (out.depth.detach().cpu().numpy().astype(np.float32),
                out.alpha[..., 0].detach().cpu().numpy())

    with ctx.timed("choose_parameters"):
        sample = [rendered(v) for v in views[:: max(1, len(views) // 8)]]
        min_alpha = choose_alpha_threshold([a for _, a in sample])
        seen = np.concatenate([d[(a >= min_alpha) & (d > 0)] for d, a in sample])
        if not seen.size:  # the splats cover nothing solidly in the sample: fall back on SfM depths
            seen = np.asarray([median_depth(model)])
        first = tsdf.scene_params(seen, focal, extent, voxel_option)

    def frames(alpha_min: float) -> Iterator[tsdf.DepthFrame]:
        covered.clear()
        for i, (sv, v) in enumerate(zip(model.views, views, strict=True)):
            depth, alpha = rendered(v)
            keep = (alpha >= alpha_min) & (depth > 0) & ~depth_edges(depth)
            covered.append(float(keep.mean()))
            color = (load_image(sfm_dir / "images" / sv.file, v.width, v.height).numpy() * 255 + 0.5).astype(np.uint8)
            ctx.progress.update(0.05 + 0.75 * (i + 1) / len(views), f"fusing view {i + 1}/{len(views)}")
            yield tsdf.DepthFrame(depth=np.where(keep, depth, 0.0).astype(np.float32), color=color,
                                  K=v.K.numpy().astype(np.float64), viewmat=v.viewmat.numpy().astype(np.float64))

    # Parameters from the scene first; once more, looser (coarser voxels, a wider depth range,
    # fainter splats), before giving up with the reasons of both.
    attempts = [(first, min_alpha), (first.looser(), ALPHA_LEVELS[-1])]
    tried: list[dict[str, Any]] = []
    fused = cleanup = None
    for n, (tp, alpha_min) in enumerate(attempts, 1):
        try:
            with ctx.timed(f"render_fuse_extract_{n}"):
                fused = tsdf.fuse(frames(alpha_min), tp, min_weight=MIN_VIEWS)
            ctx.progress.update(0.85, "cleaning the surface")
            with ctx.timed(f"clean_{n}"):
                cleanup = tsdf.clean_mesh(fused.mesh)
            if len(fused.mesh.triangles) == 0:
                raise tsdf.FusionError(f"the {fused.views_fused} fused views gave no surface")
            tried.append({**tp.to_dict(), "alpha_threshold": alpha_min, "result": "ok"})
            break
        except tsdf.FusionError as exc:
            log.warning("mesh attempt %d of %d failed: %s", n, len(attempts), exc)
            tried.append({**tp.to_dict(), "alpha_threshold": alpha_min, "result": str(exc)})
            fused = None
    if fused is None or cleanup is None:
        raise StageError(EMPTY_MESH, "no surface from the splats' depth maps after "
                         + "; then ".join(f"voxel {t['voxel_size']:.4g}, depth up to {t['depth_max']:.4g}, "
                                          f"opacity >= {t['alpha_threshold']}: {t['result']}" for t in tried)
                         + f" (geometry extent {extent:.4g} SfM units)")
    mesh = fused.mesh
    tp = attempts[len(tried) - 1][0]
    min_alpha = attempts[len(tried) - 1][1]
    mesh.compute_vertex_normals()
    ctx.progress.update(0.95, "writing mesh.ply and mesh.glb")
    with ctx.timed("export"):
        tsdf.write_mesh(mesh, ctx.out_dir / "mesh.ply", ctx.out_dir / "mesh.glb")

    bbox = mesh.get_axis_aligned_bounding_box()
    # The headline figures are top-level scalars: the workflow forwards this dict to the status
    # (`metrics.mesh`), which keeps scalars only.
    metrics = {
        "enabled": True,
        "vertices": len(mesh.vertices),
        "faces": len(mesh.triangles),
        "voxel_size": round(tp.voxel_size, 6),
        "views": len(views),
        "views_fused": fused.views_fused,
        "attempts": len(tried),
        "device": ctx.device,
    }
    report = {**metrics, **cleanup, "depth_source": "splat expected depth (no depth edges)", "alpha_threshold": min_alpha,
              "median_sfm_depth": round(median_depth(model), 6), "depth_trunc": round(tp.depth_max, 6),
              "geometry_extent": round(extent, 6), "camera_extent": round(camera_extent, 6),
              "views_empty": fused.views_empty, "views_refused": fused.views_failed, "open3d_errors": fused.errors,
              "tries": tried,
              "mean_covered_fraction": round(float(np.mean(covered)), 4) if covered else 0.0,
              "bbox_min": np.asarray(bbox.min_bound).round(6).tolist(),
              "bbox_max": np.asarray(bbox.max_bound).round(6).tolist(),
              "timings": dict(ctx.timings)}
    ctx.write_report(report)
    return metrics
