"""The pieces of the sfm stage on their own: pair selection, loop-closure retrieval, pose maths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pose_accuracy as pa
import pytest

from batch_jobs.sfm import export as sfm_export
from batch_jobs.sfm import pairs as sfm_pairs


def test_sequential_pairs_window_and_power_of_two_reach() -> None:
    pairs = set(sfm_pairs.sequential_pairs(40, overlap=4))
    assert {(0, 1), (0, 4), (35, 39)} <= pairs and (0, 5) not in pairs
    assert {(0, 8), (0, 16), (0, 32), (3, 35)} <= pairs  # quadratic reach beyond the window
    assert all(i < j for i, j in pairs)
    assert len(sfm_pairs.exhaustive_pairs(12)) == 66


def test_loop_pairs_all_far_keyframes_or_retrieved_candidates() -> None:
    keys = sfm_pairs.keyframes(30, 5)
    assert keys == [0, 5, 10, 15, 20, 25, 29]
    pairs = sfm_pairs.loop_pairs(keys, min_gap=8)
    assert (0, 29) in pairs and (0, 5) not in pairs and all(j - i > 8 for i, j in pairs)
    # With many keyframes, the similarity picks the partners.
    keys = list(range(0, 100, 2))
    sim = np.eye(len(keys))
    sim[3, 45] = sim[45, 3] = 0.9  # keyframe 6 looks like keyframe 90
    pairs = sfm_pairs.loop_pairs(keys, min_gap=10, similarity=sim, candidates=1, exhaustive_keys=10)
    assert (6, 90) in pairs and len(pairs) <= len(keys)


def test_vlad_retrieval_finds_the_revisited_view(synthetic_video: dict[str, Path]) -> None:
    import av
    import pycolmap

    frames = {}
    with av.open(str(synthetic_video["video"])) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in (0, 12, 24, 36, 48, 60, 72, 84, 14, 50):
                frames[i] = f.to_ndarray(format="gray")
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = 1500
    sift = pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)
    order = [0, 12, 24, 36, 48, 60, 72, 84, 14, 50]  # the last two come back near 12 and 48
    descs = [np.asarray(sift.extract_from_uint8_array(np.ascontiguousarray(frames[i]))[1].data) for i in order]
    sim = sfm_pairs.similarity_matrix(descs, words=32)
    assert order[int(np.argsort(-sim[8])[1])] == 12
    assert order[int(np.argsort(-sim[9])[1])] == 48


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_umeyama_recovers_a_similarity_and_errors_vanish() -> None:
    rng = np.random.default_rng(0)
    truth = {f"{i:04d}": pa.Pose(_random_rotation(rng), rng.normal(size=3)) for i in range(8)}
    s, Ra, ta = 0.37, _random_rotation(rng), np.array([1.0, -2.0, 0.5])
    # The same cameras in another world frame: x_est = (Ra^T (x_true - ta)) / s.
    est = {}
    for n, p in truth.items():
        R_est = p.R @ Ra
        c_est = Ra.T @ (p.center - ta) / s
        est[n] = pa.Pose(R_est, -R_est @ c_est)
    sim = pa.umeyama(np.stack([est[n].center for n in truth]), np.stack([truth[n].center for n in truth]))
    assert sim.s == pytest.approx(s) and np.allclose(sim.R, Ra) and np.allclose(sim.t, ta)
    err = pa.pose_errors(est, truth)
    assert err.center_rmse < 1e-9 and err.rotation_mean_deg < 1e-5 and err.missing == []

    # A camera displaced by 0.1 and turned by 2 degrees shows up as such.
    n0 = "0003"
    turn = np.array([[math.cos(math.radians(2)), -math.sin(math.radians(2)), 0],
                     [math.sin(math.radians(2)), math.cos(math.radians(2)), 0], [0, 0, 1]])
    moved = {**est, n0: pa.Pose(turn @ est[n0].R, -(turn @ est[n0].R) @ (est[n0].center + np.array([0.1 / s, 0, 0])))}
    del moved["0005"]
    err = pa.pose_errors(moved, truth)
    assert err.missing == ["0005"]
    worst = err.names[int(np.argmax(err.rotation_errors_deg))]
    assert worst == n0 and err.rotation_max_deg == pytest.approx(2.0, abs=0.05)
    assert err.names[int(np.argmax(err.center_errors))] == n0
    assert 0.03 < err.center_max < 0.1  # the alignment spreads part of the error over the others


def test_transforms_axes_and_ply_round_trip(tmp_path: Path) -> None:
    R = _random_rotation(np.random.default_rng(1))
    t = np.array([0.3, -0.2, 2.0])
    c2w = sfm_export.camera_to_world_gl(np.hstack([R, t[:, None]]))
    np.testing.assert_allclose(c2w[:3, 3], -R.T @ t)
    np.testing.assert_allclose(c2w[:3, 0], R[0])  # x right in both conventions
    np.testing.assert_allclose(c2w[:3, 1], -R[1])  # y up (COLMAP's y is down)
    np.testing.assert_allclose(c2w[:3, 2], -R[2])  # z back (COLMAP looks down +z)
    xyz = np.random.default_rng(2).normal(size=(50, 3))
    rgb = np.random.default_rng(3).integers(0, 256, (50, 3)).astype(np.uint8)
    sfm_export.write_ply(tmp_path / "p.ply", xyz, rgb)
    back_xyz, back_rgb = sfm_export.read_ply(tmp_path / "p.ply")
    np.testing.assert_allclose(back_xyz, xyz, atol=1e-6)
    assert (back_rgb == rgb).all()


def test_gpu_only_with_a_cuda_build_and_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA build of pycolmap on a VM without a GPU must not be asked for the GPU."""
    import pycolmap

    from batch_jobs.sfm import features as sfm_features

    assert sfm_features.cuda_device_count() >= 0  # 0 here: no driver, no error
    try:
        monkeypatch.delenv("SPLATPIPE_DEVICE", raising=False)
        monkeypatch.setattr(pycolmap, "has_cuda", True)
        monkeypatch.setattr(sfm_features, "cuda_device_count", lambda: 0)
        sfm_features.use_gpu.cache_clear()
        assert not sfm_features.use_gpu() and sfm_features.device() == pycolmap.Device.cpu
        monkeypatch.setattr(sfm_features, "cuda_device_count", lambda: 1)
        sfm_features.use_gpu.cache_clear()
        assert sfm_features.use_gpu() and sfm_features.device() == pycolmap.Device.cuda
        monkeypatch.setenv("SPLATPIPE_DEVICE", "cpu")
        sfm_features.use_gpu.cache_clear()
        assert not sfm_features.use_gpu()
        monkeypatch.setattr(pycolmap, "has_cuda", False)
        monkeypatch.delenv("SPLATPIPE_DEVICE")
        sfm_features.use_gpu.cache_clear()
        assert not sfm_features.use_gpu()  # a device without a CUDA build
    finally:
        sfm_features.use_gpu.cache_clear()
