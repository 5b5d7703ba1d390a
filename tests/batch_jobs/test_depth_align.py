"""The depth alignment maths on the synthetic scene's true depth maps (known scale and shift)."""

from __future__ import annotations

import numpy as np
import pytest

from batch_jobs.depth import align as depth_align
from emulator.synthetic_scene import SyntheticScene


@pytest.fixture(scope="module")
def true_depth() -> np.ndarray:
    scene = SyntheticScene(7)
    cam = scene.orbit_cameras(20, 160, 120)[12]
    _, depth = scene.render(cam, supersample=1)
    return depth  # inf where the sky is


def _samples(depth: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(np.isfinite(depth))
    pick = rng.choice(len(ys), n, replace=False)
    return ys[pick], xs[pick]


def _relative_prediction(depth: np.ndarray, scale: float, shift: float, noise: float,
                         rng: np.random.Generator) -> np.ndarray:
    """What a relative monocular model gives: disparity up to an affine map, sky at ~0 disparity."""
    disp = np.where(np.isfinite(depth), 1.0 / depth, 0.0)
    disp = disp * (1 + noise * rng.standard_normal(depth.shape))
    return ((disp - shift) / scale).astype(np.float32)


def test_recovers_known_scale_and_shift_despite_outliers(true_depth: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    pred = _relative_prediction(true_depth, scale=0.02, shift=-0.05, noise=0.0, rng=rng)
    ys, xs = _samples(true_depth, 400, rng)
    z = true_depth[ys, xs].astype(np.float64)
    z[:80] *= rng.uniform(0.3, 3.0, 80)  # 20 % of the SfM points are wrong matches
    a = depth_align.fit_scale_shift(pred[ys, xs], z, "disparity")
    assert a.ok
    assert a.scale == pytest.approx(0.02, rel=1e-3) and a.shift == pytest.approx(-0.05, abs=1e-4)
    assert 0.75 <= a.stats["inlier_fraction"] <= 0.85  # the outliers are found as such
    aligned = depth_align.aligned_depth_map(pred, a, max_depth=4 * float(z.max()))
    valid = np.isfinite(true_depth)
    rel = np.abs(aligned[valid] - true_depth[valid]) / true_depth[valid]
    assert np.median(rel) < 1e-3 and (aligned[~valid] == 0).all()  # the sky comes out invalid, not far


def test_noisy_prediction_aligns_to_its_noise_level(true_depth: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    pred = _relative_prediction(true_depth, scale=3.0, shift=0.1, noise=0.03, rng=rng)
    ys, xs = _samples(true_depth, 300, rng)
    a = depth_align.fit_scale_shift(pred[ys, xs], true_depth[ys, xs], "disparity")
    assert a.ok and a.scale == pytest.approx(3.0, rel=0.03)
    assert a.stats["median_rel_error"] < 0.03  # about the 3 % noise, not more


def test_disparity_model_must_be_fitted_in_disparity_space(true_depth: np.ndarray) -> None:
    """A shifted disparity is not a shifted depth.

    The naive alternative, inverting the relative prediction and fitting depth ~ s / p + t, is
    the wrong model: the same prediction that aligns exactly in disparity space is a third off.
    """
    rng = np.random.default_rng(2)
    pred = _relative_prediction(true_depth, scale=0.5, shift=0.15, noise=0.0, rng=rng)
    ys, xs = _samples(true_depth, 300, rng)
    p, z = pred[ys, xs], true_depth[ys, xs]
    right = depth_align.fit_scale_shift(p, z, "disparity")
    wrong = depth_align.fit_scale_shift(1.0 / p, z, "depth")
    assert right.ok and right.stats["median_rel_error"] < 1e-4
    assert wrong.ok and wrong.stats["median_rel_error"] > 0.1


def test_metric_predictions_fit_in_depth_space(true_depth: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    valid = np.isfinite(true_depth)
    pred = np.where(valid, (true_depth - 0.2) / 1.7, 0.0)  # metric model, off by scale and offset
    ys, xs = _samples(true_depth, 200, rng)
    a = depth_align.fit_scale_shift(pred[ys, xs], true_depth[ys, xs], "depth")
    assert a.ok and a.scale == pytest.approx(1.7, rel=1e-4) and a.shift == pytest.approx(0.2, abs=1e-4)


def test_unalignable_inputs_are_reported_not_raised() -> None:
    few = depth_align.fit_scale_shift(np.ones(5), np.ones(5) * 2)
    assert not few.ok and "only 5" in few.reason
    flat = depth_align.fit_scale_shift(np.zeros(100), np.linspace(1, 5, 100))
    assert not flat.ok
    anti = depth_align.fit_scale_shift(np.linspace(1, 5, 100), np.linspace(1, 5, 100))  # disparity grows with depth
    assert not anti.ok
    assert (depth_align.aligned_depth_map(np.ones((4, 4)), flat, 10.0) == 0).all()
