"""Our tiled CPU rasterizer against the naive dense oracle (and gsplat's CUDA rasterizer when present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from raster_dense import rasterize_dense
from raster_parity import DIFF_KEYS, TILE, cover_radii, random_2d, rasterizer_parity, render_both

from batch_jobs.gaussians import raster_cpu
from batch_jobs.gaussians.projection import may_be_visible

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's rasterizer")
PARITY_REL = 1e-4  # the goal: our rasterizer within 1e-4 of gsplat's, relative to each tensor's scale


def _both(inputs: dict[str, torch.Tensor], width: int, height: int, tile: int = 16):
    """Forward + backward through both rasterizers with the same random output gradients."""
    g = torch.Generator().manual_seed(123)
    ch = inputs["colors"].shape[1]
    w_img = torch.randn(height, width, ch, generator=g, dtype=torch.float64)
    w_alpha = torch.randn(height, width, 1, generator=g, dtype=torch.float64)
    ours = {k: inputs[k].clone().requires_grad_(True) for k in DIFF_KEYS}
    img, alpha = raster_cpu.rasterize(ours["means2d"], ours["conics"], ours["colors"], ours["opacities"],
                                      inputs["depths"], width, height, ours["background"], tile=tile)
    ((img.double() * w_img).sum() + (alpha.double() * w_alpha).sum()).backward()
    ref = {k: inputs[k].double().clone().requires_grad_(True) for k in DIFF_KEYS}
    img_d, alpha_d = rasterize_dense(ref["means2d"], ref["conics"], ref["colors"], ref["opacities"],
                                     inputs["depths"].double(), width, height, ref["background"])
    ((img_d * w_img).sum() + (alpha_d * w_alpha).sum()).backward()
    return (img, alpha, ours), (img_d, alpha_d, ref)


@pytest.mark.parametrize("channels", [3, 4])
def test_forward_and_gradients_match_the_dense_oracle(channels: int) -> None:
    inputs = random_2d(400, 67, 45, seed=channels, channels=channels)
    (img, alpha, ours), (img_d, alpha_d, ref) = _both(inputs, 67, 45)
    assert img.shape == (45, 67, channels) and alpha.shape == (45, 67, 1)
    assert (img.double() - img_d).abs().max() < 1e-5
    assert (alpha.double() - alpha_d).abs().max() < 1e-5
    for k in DIFF_KEYS:
        scale = ref[k].grad.abs().max().item()
        err = (ours[k].grad.double() - ref[k].grad).abs().max().item()
        assert err <= 1e-4 * max(1.0, scale), (k, err, scale)
    # The test has teeth: some Gaussians are opaque enough to stop pixels early, many are clamped.
    assert (alpha_d > 0.999).any() and ((alpha_d > 0.05) & (alpha_d < 0.95)).any()


def test_tile_size_does_not_change_the_image() -> None:
    inputs = random_2d(300, 50, 40, seed=5)
    args = (inputs["means2d"], inputs["conics"], inputs["colors"], inputs["opacities"], inputs["depths"], 50, 40,
            inputs["background"])
    a16, _ = raster_cpu.rasterize(*args, tile=16)
    a8, _ = raster_cpu.rasterize(*args, tile=8)
    a5, _ = raster_cpu.rasterize(*args, tile=5)
    assert torch.allclose(a16, a8, atol=1e-6) and torch.allclose(a16, a5, atol=1e-6)


def test_empty_and_offscreen_inputs_give_the_background() -> None:
    bg = torch.tensor([0.2, 0.4, 0.6])
    img, alpha = raster_cpu.rasterize(torch.zeros(0, 2), torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0),
                                      torch.zeros(0), 20, 10, bg)
    assert torch.allclose(img, bg.expand(10, 20, 3)) and alpha.abs().max() == 0
    inputs = random_2d(50, 20, 10)
    far = inputs["means2d"] + 1000.0  # all far outside the image
    img, alpha = raster_cpu.rasterize(far, inputs["conics"], inputs["colors"], inputs["opacities"], inputs["depths"],
                                      20, 10, bg)
    assert torch.allclose(img, bg.expand(10, 20, 3)) and alpha.abs().max() == 0
    wild = inputs["means2d"].clone()
    wild[0] = torch.tensor([1e20, -1e20])
    wild[1] = torch.tensor([float("nan"), 5.0])
    wild[2] = torch.tensor([float("inf"), 5.0])
    img, alpha = raster_cpu.rasterize(wild, inputs["conics"], inputs["colors"], inputs["opacities"],
                                      inputs["depths"], 20, 10, bg)
    assert torch.isfinite(img).all() and torch.isfinite(alpha).all()


def test_front_to_back_order_follows_depth() -> None:
    """Two opaque discs at the same place: the nearer one's colour wins, whatever the input order."""
    means = torch.tensor([[10.0, 10.0], [10.0, 10.0]])
    conics = torch.tensor([[0.05, 0.0, 0.05], [0.05, 0.0, 0.05]])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    opac = torch.tensor([0.999, 0.999])
    for depths, expect in ((torch.tensor([1.0, 2.0]), 0), (torch.tensor([2.0, 1.0]), 2)):
        img, _ = raster_cpu.rasterize(means, conics, colors, opac, depths, 20, 20)
        assert int(img[10, 10].argmax()) == expect


def test_culling_keeps_work_proportional_to_coverage() -> None:
    """No pixel x Gaussian product: small Gaussians touch few tiles."""
    n, w, h = 20_000, 640, 480
    inputs = random_2d(n, w, h, seed=3, scale=1.0)
    m = inputs["means2d"]
    inside = ((m[:, 0] >= 0) & (m[:, 0] < w) & (m[:, 1] >= 0) & (m[:, 1] < h)).sum().item()
    n_isect = raster_cpu.intersections(m, inputs["conics"], inputs["opacities"], inputs["depths"], w, h)
    tiles = (w // 16) * (h // 16)
    assert inside <= n_isect < 4 * n  # each visible Gaussian in ~1-2 tiles
    assert n_isect < 0.005 * n * tiles  # vs n * tiles for a dense pairing


def test_precull_keeps_every_gaussian_the_projection_keeps() -> None:
    from batch_jobs.gaussians.gsplat_internals import fully_fused_projection, quat_scale_to_covar_preci
    from emulator.synthetic_scene import look_at

    g = torch.Generator().manual_seed(0)
    n, w, h = 100_000, 320, 240
    means = torch.randn(n, 3, generator=g) * 4
    scales = torch.exp(torch.randn(n, 3, generator=g) * 1.5 - 2)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    K = torch.tensor([[272.0, 0, 160], [0, 272, 120], [0, 0, 1]])
    R, t = look_at(np.array([3.0, -2.0, 1.5]), np.array([0.0, 0.0, 0.4]))
    vm = torch.eye(4)
    vm[:3, :3] = torch.tensor(R, dtype=torch.float32)
    vm[:3, 3] = torch.tensor(t, dtype=torch.float32)
    covars, _ = quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, *_ = fully_fused_projection(means, covars, vm[None], K[None], w, h, eps2d=0.3)
    kept = set(torch.nonzero((radii[0] > 0).all(-1))[:, 0].tolist())
    cand = set(may_be_visible(means, scales, vm, K, w, h).tolist())
    assert kept <= cand
    assert len(cand) < 0.8 * n  # and it does cull


def test_gsplat_is_given_the_tiles_our_rasterizer_uses() -> None:
    """The CUDA parity test's premise, checked here: the radii handed to gsplat's isect_tiles
    reach every tile our rasterizer bins a Gaussian into (gsplat's tile range, as its
    IntersectTile kernel computes it, holds ours), and cull only what ours culls."""
    inputs = random_2d(2000, 101, 67, seed=4, scale=4.0)
    m, c, o = inputs["means2d"], inputs["conics"], inputs["opacities"]
    _, trect = raster_cpu._rects(*(np.ascontiguousarray(x.numpy(), np.float32) for x in (m, c, o)), 101, 67, TILE)
    radii = cover_radii(m, c, o).numpy()
    tiles_x, tiles_y = -(-101 // TILE), -(-67 // TILE)
    ours = trect[:, 2] >= trect[:, 0]
    assert ours.sum() > 1000
    assert (radii[ours] > 0).all()
    mx, my = m[:, 0].numpy()[ours], m[:, 1].numpy()[ours]
    rx, ry = radii[ours, 0], radii[ours, 1]
    lo_x = np.clip(np.floor(mx / TILE - rx / TILE), 0, tiles_x)
    hi_x = np.clip(np.ceil(mx / TILE + rx / TILE), 0, tiles_x)  # exclusive
    lo_y = np.clip(np.floor(my / TILE - ry / TILE), 0, tiles_y)
    hi_y = np.clip(np.ceil(my / TILE + ry / TILE), 0, tiles_y)
    t = trect[ours]
    assert (lo_x <= t[:, 0]).all() and (t[:, 2] < hi_x).all()
    assert (lo_y <= t[:, 1]).all() and (t[:, 3] < hi_y).all()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("channels", [3, 4])
def test_rasterizer_parity_with_gsplat_on_cuda(channels: int) -> None:  # pragma: no cover - no GPU in CI
    """Our rasterizer alone against gsplat's (isect_tiles + rasterize_to_pixels) on the same 2D
    Gaussians: images, alphas and every input's gradient within PARITY_REL of gsplat's scale."""
    for n, w, h, seed in ((400, 67, 45, channels), (3000, 160, 120, 10 + channels)):
        errors = rasterizer_parity(random_2d(n, w, h, seed=seed, channels=channels), w, h)
        worst = max(errors, key=errors.get)
        assert errors[worst] <= PARITY_REL, (n, w, h, errors)


@pytest.mark.cuda
@needs_cuda
def test_parity_with_gsplat_rasterization_on_cuda() -> None:  # pragma: no cover - no GPU in CI
    """The CPU path (reference projection + our rasterizer) against gsplat's CUDA renderer."""
    outs, grads = render_both()
    for a, b in zip(outs["cpu"], outs["cuda"], strict=True):
        assert (a - b).abs().max() < 2e-3
    for k in grads["cpu"]:
        scale = grads["cuda"][k].abs().max().item()
        assert (grads["cpu"][k] - grads["cuda"][k]).abs().max().item() <= 2e-2 * max(scale, 1e-6), k
