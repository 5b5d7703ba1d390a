"""Our tiled CPU rasterizer against the naive dense oracle (and gsplat's CUDA rasterizer when present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from raster_dense import rasterize_dense

from batch_jobs.gaussians import raster_cpu
from batch_jobs.gaussians.projection import may_be_visible


def _random_2d(n: int, width: int, height: int, seed: int = 0, scale: float = 3.0,
               channels: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.2, height * 1.2]) - torch.tensor(
        [width * 0.1, height * 0.1])
    L = torch.randn(n, 2, 2, generator=g) * scale
    cov = L @ L.transpose(1, 2) + 0.3 * torch.eye(2)
    inv = torch.linalg.inv(cov)
    return {
        "means2d": means,
        "conics": torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], dim=-1),
        "colors": torch.rand(n, channels, generator=g),
        "opacities": torch.rand(n, generator=g) * 0.95 + 0.04,
        "depths": torch.rand(n, generator=g) * 10 + 0.5,
        "background": torch.rand(channels, generator=g),
    }


DIFF_KEYS = ("means2d", "conics", "colors", "opacities", "background")


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
    inputs = _random_2d(400, 67, 45, seed=channels, channels=channels)
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
    inputs = _random_2d(300, 50, 40, seed=5)
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
    inputs = _random_2d(50, 20, 10)
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
    inputs = _random_2d(n, w, h, seed=3, scale=1.0)
    m = inputs["means2d"]
    inside = ((m[:, 0] >= 0) & (m[:, 0] < w) & (m[:, 1] >= 0) & (m[:, 1] < h)).sum().item()
    n_isect = raster_cpu.intersections(m, inputs["conics"], inputs["opacities"], inputs["depths"], w, h)
    tiles = (w // 16) * (h // 16)
    assert inside <= n_isect < 4 * n  # each visible Gaussian in ~1-2 tiles
    assert n_isect < 0.005 * n * tiles  # vs n * tiles for a dense pairing


def test_precull_keeps_every_gaussian_the_projection_keeps() -> None:
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

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
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, *_ = _fully_fused_projection(means, covars, vm[None], K[None], w, h, eps2d=0.3)
    kept = set(torch.nonzero((radii[0] > 0).all(-1))[:, 0].tolist())
    cand = set(may_be_visible(means, scales, vm, K, w, h).tolist())
    assert kept <= cand
    assert len(cand) < 0.8 * n  # and it does cull


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat.rasterization")
def test_parity_with_gsplat_rasterization_on_cuda() -> None:  # pragma: no cover - no GPU in CI
    """The CPU path (reference projection + our rasterizer) against gsplat's CUDA renderer."""
    from batch_jobs.gaussians.camera import View
    from batch_jobs.gaussians.params import init_params
    from batch_jobs.gaussians.render import render
    from emulator.synthetic_scene import SyntheticScene, look_at

    scene = SyntheticScene(7)
    rng = np.random.default_rng(0)
    pts = scene.sample_surface(4000, seed=1)
    params = init_params(pts, rng.integers(0, 255, (len(pts), 3)), sh_degree=2, init_opacity=0.6)
    with torch.no_grad():  # anisotropic, so rotations matter; some view dependence
        params["shN"].normal_(0, 0.1)
        params["scales"].add_(torch.randn(params["scales"].shape, generator=torch.Generator().manual_seed(1)) * 0.4)
    R, t = look_at(np.array([3.0, -2.0, 1.5]), scene.target)
    vm = torch.eye(4)
    vm[:3, :3] = torch.tensor(R, dtype=torch.float32)
    vm[:3, 3] = torch.tensor(t, dtype=torch.float32)
    view = View("p", torch.tensor([[200.0, 0, 120], [0, 200, 90], [0, 0, 1]]), vm, 240, 180)
    bg = torch.tensor([0.1, 0.2, 0.3])
    gw = torch.randn(180, 240, 3)
    grads = {}
    outs = {}
    for dev in ("cpu", "cuda"):
        p = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone().to(dev)) for k, v in params.items()})
        out = render(p, view, 2, with_depth=True, background=bg.to(dev), device=dev)
        ((out.rgb * gw.to(dev)).sum() + out.alpha.sum()).backward()
        outs[dev] = (out.rgb.detach().cpu(), out.alpha.detach().cpu(), out.depth.detach().cpu())
        grads[dev] = {k: v.grad.detach().cpu() for k, v in p.items()}
    for a, b in zip(outs["cpu"], outs["cuda"], strict=True):
        assert (a - b).abs().max() < 2e-3
    for k in grads["cpu"]:
        scale = grads["cuda"][k].abs().max().item()
        assert (grads["cpu"][k] - grads["cuda"][k]).abs().max().item() <= 2e-2 * max(scale, 1e-6), k
