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

import numpy as np

TRUNC_VOXELS = 4.0  # the signed-distance truncation, in voxels


@dataclass
class DepthFrame:
    depth: np.ndarray  # [H, W] float32, SfM units, 0 = none
    color: np.ndarray  # [H, W, 3] uint8 RGB
    K: np.ndarray  # [3, 3] pixels, COLMAP convention
    viewmat: np.ndarray  # [4, 4] world -> camera


def auto_voxel_size(median_depth: float, focal_px: float, extent: float, pixels_per_voxel: float = 1.5) -> float:
    """A voxel spans a few pixels' footprint at the typical depth, within [extent/2048, extent/32]."""
    voxel = pixels_per_voxel * median_depth / max(focal_px, 1e-9)
    return float(np.clip(voxel, extent / 2048.0, extent / 32.0))


def fuse(frames: Iterable[DepthFrame], voxel_size: float, depth_trunc: float, min_weight: float = 2.0) -> object:
    """Fuse every frame into a sparse TSDF (open3d VoxelBlockGrid); returns a legacy TriangleMesh.

    `min_weight`: how many views must have seen a voxel for it to become surface. (open3d's
    legacy ScalableTSDFVolume returns empty meshes in the open3d-cpu 0.20 wheel, hence the
    tensor VoxelBlockGrid.) The block hash map grows as needed and allocates its capacity up
    front, so it starts small; 16^3-voxel blocks leave fewer seams than 8^3 ones.
    """
    import open3d as o3d
    import open3d.core as o3c

    device = o3c.Device("CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)), voxel_size=float(voxel_size), block_resolution=16, block_count=1000,
        device=device)
    for f in frames:
        K = np.asarray(f.K, np.float64).copy()
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        intrinsic = o3c.Tensor(K, o3c.float64)
        extrinsic = o3c.Tensor(np.asarray(f.viewmat, np.float64), o3c.float64)
        depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.depth, np.float32)[..., None]))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.color, np.float32) / 255.0))
        blocks = grid.compute_unique_block_coordinates(depth, intrinsic, extrinsic, 1.0, float(depth_trunc),
                                                       TRUNC_VOXELS)
        grid.integrate(blocks, depth, color, intrinsic, extrinsic, 1.0, float(depth_trunc), TRUNC_VOXELS)
    return grid.extract_triangle_mesh(weight_threshold=float(min_weight)).to_legacy()


def clean_mesh(mesh: object, min_component_fraction: float = 0.02, min_component_triangles: int = 50) -> dict[str, int]:
    """Drop degenerate/duplicated faces and components smaller than a fraction of the largest (in place)."""
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_duplicated_vertices()
    mesh.remove_unreferenced_vertices()
    n_before = len(mesh.triangles)
    if n_before == 0:
        return {"components": 0, "components_removed": 0, "triangles_removed": 0}
    labels, counts, _ = mesh.cluster_connected_triangles()
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    keep_min = max(min_component_triangles, int(min_component_fraction * counts.max()))
    small = counts < keep_min
    mesh.remove_triangles_by_mask(small[labels])
    mesh.remove_unreferenced_vertices()
    return {"components": len(counts), "components_removed": int(small.sum()),
            "triangles_removed": int(n_before - len(mesh.triangles))}


def write_mesh(mesh: object, ply_path: Path, glb_path: Path) -> None:
    """Binary PLY (open3d) and glTF binary (trimesh), both with per-vertex colours."""
    import open3d as o3d
    import trimesh

    o3d.io.write_triangle_mesh(str(ply_path), mesh, write_ascii=False, write_vertex_normals=True,
                               write_vertex_colors=True)
    colors = (np.clip(np.asarray(mesh.vertex_colors), 0, 1) * 255 + 0.5).astype(np.uint8)
    tm = trimesh.Trimesh(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.triangles),
                         vertex_colors=np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1),
                         process=False)
    Path(glb_path).write_bytes(tm.export(file_type="glb"))
