"""Depth maps -> a coloured surface mesh: TSDF fusion (open3d), marching cubes, clean-up.

Each view contributes a depth map (SfM units, 0 = no depth) and its colour image; open3d's
sparse TSDF (VoxelBlockGrid) fuses them, marching cubes extracts the surface, and the clean-up
drops degenerate faces and small floating components (what a few wrong depths leave behind).
Intrinsics follow COLMAP (pixel centres at +0.5); open3d puts pixel centres on integers, so the
principal point moves by half a pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # open3d is imported where it is used: it is slow to load
    import open3d as o3d

TRUNC_VOXELS = 4.0  # the signed-distance truncation, in voxels
BLOCK_RESOLUTION = 16  # voxels per block side: 16^3-voxel blocks leave fewer seams than 8^3 ones
MIN_BLOCKS, MAX_BLOCKS = 1_000, 200_000  # the block hash map's initial capacity (it grows as needed)
DEPTH_RANGE_MEDIANS = 4.0  # depths beyond this many median depths are not fused (far floaters)


class FusionError(Exception):
    """No view could be fused, or the fused volume held no surface; the message says why."""


@dataclass
class DepthFrame:
    depth: np.ndarray  # [H, W] float32, SfM units, 0 = none
    color: np.ndarray  # [H, W, 3] uint8 RGB
    K: np.ndarray  # [3, 3] pixels, COLMAP convention
    viewmat: np.ndarray  # [4, 4] world -> camera


@dataclass(frozen=True)
class TsdfParams:
    """What a fusion needs, in SfM units (see `scene_params`)."""

    voxel_size: float
    depth_max: float  # depths beyond are not fused
    trunc_voxels: float = TRUNC_VOXELS
    block_count: int = MIN_BLOCKS

    def looser(self) -> TsdfParams:
        """The second try: coarser voxels, a wider band and every depth the views have."""
        return TsdfParams(voxel_size=2.0 * self.voxel_size, depth_max=4.0 * self.depth_max,
                          trunc_voxels=1.5 * self.trunc_voxels, block_count=self.block_count)

    def to_dict(self) -> dict[str, float]:
        return {"voxel_size": round(self.voxel_size, 6), "depth_max": round(self.depth_max, 6),
                "trunc_voxels": self.trunc_voxels, "block_count": self.block_count}


@dataclass
class Fused:
    mesh: o3d.geometry.TriangleMesh  # legacy (not open3d.t)
    views_fused: int
    views_empty: int  # no depth inside (0, depth_max]: nothing to fuse
    views_failed: int  # open3d refused the view (its message is logged in `errors`)
    errors: list[str]


def auto_voxel_size(median_depth: float, focal_px: float, extent: float, pixels_per_voxel: float = 1.5) -> float:
    """A voxel spans a few pixels' footprint at the typical depth, within [extent/2048, extent/32]."""
    voxel = pixels_per_voxel * median_depth / max(focal_px, 1e-9)
    return float(np.clip(voxel, extent / 2048.0, extent / 32.0))


def geometry_extent(points: np.ndarray) -> float:
    """The largest side of the box holding the central 98 % of `points` along each axis (a few
    far floaters do not count); 0 for fewer than two points."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 2:
        return 0.0
    lo, hi = np.percentile(pts, [1.0, 99.0], axis=0)
    return float((hi - lo).max())


def scene_params(depths: np.ndarray, focal_px: float, extent: float, voxel_size: float = 0.0) -> TsdfParams:
    """TSDF parameters from the scene: `depths` are sampled rendered depths (SfM units, > 0),
    `extent` the size of the geometry (`geometry_extent`). The voxel follows the pixel footprint
    at the median depth (unless `voxel_size` is given), the depth range a few median depths, and
    the block capacity the surface of a box of the geometry's size."""
    d = np.asarray(depths, np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    median = float(np.median(d)) if d.size else max(extent, 1e-6)
    extent = extent if extent > 0 else median
    voxel = float(voxel_size) or auto_voxel_size(median, focal_px, extent)
    depth_max = DEPTH_RANGE_MEDIANS * median
    if d.size:  # never cut off most of what the views see
        depth_max = max(depth_max, 1.05 * float(np.percentile(d, 90.0)))
    per_side = extent / (voxel * BLOCK_RESOLUTION)
    blocks = int(np.clip(6.0 * per_side * per_side, MIN_BLOCKS, MAX_BLOCKS))
    return TsdfParams(voxel_size=voxel, depth_max=depth_max, block_count=blocks)


def fuse(frames: Iterable[DepthFrame], params: TsdfParams, min_weight: float = 2.0) -> Fused:
    """Fuse every frame into a sparse TSDF (open3d VoxelBlockGrid); the surface as a legacy mesh.

    `min_weight`: how many views must have seen a voxel for it to become surface. (open3d's
    legacy ScalableTSDFVolume returns empty meshes in the open3d-cpu 0.20 wheel, hence the
    tensor VoxelBlockGrid.) A view with no depth in range touches no block, which open3d treats
    as an error ("No block is touched in TSDF volume"): such a view is skipped. FusionError
    when no view could be fused.
    """
    import open3d as o3d
    import open3d.core as o3c

    device = o3c.Device("CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=(o3c.SizeVector([1]), o3c.SizeVector([1]), o3c.SizeVector([3])),
        voxel_size=float(params.voxel_size), block_resolution=BLOCK_RESOLUTION,
        block_count=int(params.block_count), device=device)
    fused, empty, errors = 0, 0, []
    for f in frames:
        d = np.ascontiguousarray(f.depth, np.float32)
        if not ((d > 0) & (d <= params.depth_max)).any():
            empty += 1
            continue
        K = np.asarray(f.K, np.float64).copy()
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        intrinsic = o3c.Tensor(K, o3c.float64, device)
        extrinsic = o3c.Tensor(np.asarray(f.viewmat, np.float64), o3c.float64, device)
        depth = o3d.t.geometry.Image(o3c.Tensor(d[..., None], o3c.float32, device))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.color, np.float32) / 255.0,
                                                o3c.float32, device))
        try:
            blocks = grid.compute_unique_block_coordinates(depth, intrinsic, extrinsic, 1.0, float(params.depth_max),
                                                           float(params.trunc_voxels))
            grid.integrate(blocks, depth, color, intrinsic, extrinsic, 1.0, float(params.depth_max),
                           float(params.trunc_voxels))
        except RuntimeError as exc:  # open3d reports every refusal as a RuntimeError
            errors.append(_open3d_message(exc))
            continue
        fused += 1
    if not fused:
        why = f"{empty} had no depth within (0, {params.depth_max:.4g}]"
        if errors:
            why += f", open3d refused {len(errors)} ({errors[0]})"
        raise FusionError(f"no view could be fused: of {empty + len(errors)} views, {why}")
    try:
        mesh = grid.extract_triangle_mesh(weight_threshold=float(min_weight)).to_legacy()
    except RuntimeError as exc:
        raise FusionError(f"surface extraction failed: {_open3d_message(exc)}") from None
    return Fused(mesh, fused, empty, len(errors), errors[:5])


def _open3d_message(exc: BaseException) -> str:
    """open3d's message without its colour codes and C++ location."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    m = re.search(r"\.(?:cpp|h):\d+: (.*)", text, re.S)
    return (m.group(1) if m else text).strip()[:300]


def clean_mesh(mesh: o3d.geometry.TriangleMesh, min_component_fraction: float = 0.02,
               min_component_triangles: int = 50) -> dict[str, int]:
    """Drop degenerate/duplicated faces and components smaller than a fraction of the largest (in place)."""
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_duplicated_vertices()
    mesh.remove_unreferenced_vertices()
    n_before = len(mesh.triangles)
    if n_before == 0:
        return {"components": 0, "components_removed": 0, "triangles_removed": 0}
    cluster_of, cluster_sizes, _ = mesh.cluster_connected_triangles()
    labels = np.asarray(cluster_of)
    counts = np.asarray(cluster_sizes)
    keep_min = max(min_component_triangles, int(min_component_fraction * counts.max()))
    small = counts < keep_min
    mesh.remove_triangles_by_mask(small[labels])
    mesh.remove_unreferenced_vertices()
    return {"components": len(counts), "components_removed": int(small.sum()),
            "triangles_removed": int(n_before - len(mesh.triangles))}


def write_mesh(mesh: o3d.geometry.TriangleMesh, ply_path: Path, glb_path: Path) -> None:
    """Binary PLY (open3d) and glTF binary (trimesh), both with per-vertex colours."""
    import open3d as o3d
    import trimesh

    o3d.io.write_triangle_mesh(ply_path, mesh, write_ascii=False, write_vertex_normals=True,
                               write_vertex_colors=True)
    colors = (np.clip(np.asarray(mesh.vertex_colors), 0, 1) * 255 + 0.5).astype(np.uint8)
    tm = trimesh.Trimesh(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.triangles),
                         vertex_colors=np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1),
                         process=False)
    glb = tm.export(file_type="glb")
    if not isinstance(glb, bytes):  # trimesh returns bytes for a binary format
        raise TypeError(f"trimesh exported glb as {type(glb).__name__}, not bytes")
    Path(glb_path).write_bytes(glb)
