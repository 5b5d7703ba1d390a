"""TSDF fusion, mesh clean-up and export (the mesh stage's parts), on known geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from workspace_fixture import SMALL, GTWorkspace, cached_gt_workspace, mesh_surface_distances

from batch_jobs import runner, tsdf
from batch_jobs.mesh import choose_alpha_threshold, depth_edges
from batch_jobs.sparse_model import read_sparse_model


def _gt_frames(gt: GTWorkspace) -> list[tsdf.DepthFrame]:
    import cv2

    model = read_sparse_model(gt.workspace / "sfm" / "sparse" / "0")
    frames = []
    for v in model.views:
        color = cv2.cvtColor(cv2.imread(str(gt.workspace / "sfm" / "images" / v.file)), cv2.COLOR_BGR2RGB)
        frames.append(tsdf.DepthFrame(gt.true_depth(v.name), color, v.K, v.viewmat))
    return frames


def test_fusing_true_depths_recovers_the_true_surface(tmp_path: Path) -> None:
    """The fusion path alone (intrinsics convention, poses, colours): error about a voxel or less."""
    gt = cached_gt_workspace(SMALL)
    mesh = tsdf.fuse(_gt_frames(gt), voxel_size=0.03, depth_trunc=20.0, min_weight=1.0)
    info = tsdf.clean_mesh(mesh)
    assert len(mesh.triangles) > 10_000 and info["components"] >= 1
    tsdf.write_mesh(mesh, tmp_path / "m.ply", tmp_path / "m.glb")
    d = mesh_surface_distances(tmp_path / "m.ply", gt)
    # measured on this fixture (12 views): accuracy median 0.0135 m, chamfer 0.038 m
    assert d["accuracy_median"] < 0.02 and d["chamfer"] < 0.06, d
    colors = np.asarray(mesh.vertex_colors)
    assert colors.std() > 0.05  # the photos' texture, not a flat colour


def test_small_floating_components_are_dropped() -> None:
    import open3d as o3d

    big = o3d.geometry.TriangleMesh.create_box(4, 4, 0.1).subdivide_midpoint(4)
    speck = o3d.geometry.TriangleMesh.create_tetrahedron(0.01).translate((10, 10, 10))
    mesh = big + speck
    n_big = len(big.triangles)
    info = tsdf.clean_mesh(mesh, min_component_fraction=0.02, min_component_triangles=10)
    assert info["components"] == 2 and info["components_removed"] == 1
    assert len(mesh.triangles) == n_big
    assert np.asarray(mesh.vertices).max() < 5


def test_mesh_exports_load_with_colours(tmp_path: Path) -> None:
    import open3d as o3d
    import trimesh

    mesh = o3d.geometry.TriangleMesh.create_sphere(1.0)
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.tile([[0.2, 0.6, 0.9]], (len(mesh.vertices), 1)))
    tsdf.write_mesh(mesh, tmp_path / "mesh.ply", tmp_path / "mesh.glb")
    glb = trimesh.load(tmp_path / "mesh.glb", force="mesh")
    assert len(glb.faces) == len(mesh.triangles)
    assert np.allclose(glb.visual.vertex_colors[:, :3], [51, 153, 230], atol=1)
    back = o3d.io.read_triangle_mesh(str(tmp_path / "mesh.ply"))
    assert back.has_vertex_colors() and len(back.triangles) == len(mesh.triangles)


def test_depth_edges_mark_discontinuities() -> None:
    d = np.full((10, 10), 2.0, np.float32)
    d[:, 5:] = 5.0
    e = depth_edges(d, 0.1)
    assert e[:, 4:6].all() and not e[:, :4].any() and not e[:, 6:].any()


def test_alpha_threshold_relaxes_for_faint_splats() -> None:
    solid = [np.where(np.arange(100) < 70, 0.98, 0.0).reshape(10, 10)]  # 70 % covered, sky at 0
    faint = [np.where(np.arange(100) < 70, 0.2, 0.0).reshape(10, 10)]
    assert choose_alpha_threshold(solid) == 0.5
    assert choose_alpha_threshold(faint) == 0.15
    assert choose_alpha_threshold([np.zeros((4, 4))]) == 0.05


def test_auto_voxel_size_follows_pixel_footprint() -> None:
    assert tsdf.auto_voxel_size(4.0, 400.0, extent=10.0) == pytest.approx(1.5 * 4.0 / 400.0)
    assert tsdf.auto_voxel_size(4.0, 1e6, extent=10.0) == pytest.approx(10.0 / 2048)  # clamped


def test_mesh_disabled_and_missing_splat(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "request.json").write_text(json.dumps({"input": str(tmp_path), "options": {"preset": "preview"}}))
    for stage in ("sfm", "splat"):
        (ws / stage).mkdir()
        (ws / stage / "_SUCCESS.json").write_text("{}")
    off = runner.run_stage("mesh", str(ws), options={"mesh": False})
    assert off.status == "succeeded" and off.success["metrics"] == {"enabled": False}
    res = runner.run_stage("mesh", str(ws), options={"mesh": True})
    assert res.status == "failed" and res.exit_code == 3  # no sparse model: bad input, no retry
