"""The background: a colour per viewing direction, the photos' mean where nothing taught it otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from batch_jobs.gaussians import raster_cpu
from batch_jobs.gaussians.background import LAT_CELLS, LON_CELLS, Background
from batch_jobs.gaussians.camera import View
from batch_jobs.gaussians.params import activated, init_params
from batch_jobs.gaussians.projection import project
from batch_jobs.gaussians.render import render

W, H = 40, 30


def _view(yaw_deg: float = 0.0, pitch_deg: float = 0.0, position: tuple[float, float, float] = (0.0, 0.0, 0.0),
          image: torch.Tensor | None = None) -> View:
    """A camera at `position` looking along +z turned by yaw (about y) then pitch (about x); OpenCV axes."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    cam_to_world = ry @ rx
    viewmat = torch.eye(4)
    viewmat[:3, :3] = cam_to_world.T
    viewmat[:3, 3] = -cam_to_world.T @ torch.tensor(position)
    K = torch.tensor([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]])
    return View("v", K, viewmat, W, H, image)


def _no_gaussians() -> torch.nn.ParameterDict:
    far_behind = torch.tensor([[0.0, 0.0, -1e3]])  # behind every camera here: nothing is drawn
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(far_behind), "scales": torch.nn.Parameter(torch.zeros(1, 3) - 3),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]])), "opacities": torch.nn.Parameter(torch.zeros(1)),
        "sh0": torch.nn.Parameter(torch.zeros(1, 1, 3))})


def test_uniform_is_one_colour_in_every_direction() -> None:
    rgb = torch.tensor([0.2, 0.5, 0.9])
    bg = Background.uniform(rgb)
    for yaw, pitch in ((0, 0), (90, 30), (180, -60)):
        assert torch.allclose(bg.image(_view(yaw, pitch)), rgb.expand(H, W, 3), atol=1e-6)


def test_mean_of_views_is_the_photos_mean_colour() -> None:
    photos = [torch.full((H, W, 3), 0.2), torch.full((H, W, 3), 0.6)]
    bg = Background.mean_of([_view(image=p) for p in photos])
    assert torch.allclose(bg.image(_view()), torch.full((H, W, 3), 0.4), atol=1e-6)


def test_the_colour_follows_the_direction_not_the_position() -> None:
    bg = Background.uniform(torch.tensor([0.5, 0.5, 0.5]))
    bg.texture[:] = torch.rand(3, LAT_CELLS, LON_CELLS, generator=torch.Generator().manual_seed(0))
    here, there = bg.image(_view(30, 10)), bg.image(_view(30, 10, position=(5.0, -2.0, 40.0)))
    assert torch.equal(here, there)  # at infinity: the camera's position does not matter
    assert not torch.allclose(here, bg.image(_view(120, 10)), atol=1e-3)
    # Half a turn round is half the map's columns on: longitude wraps without a seam.
    turned = Background(bg.texture.roll(LON_CELLS // 2, dims=-1))
    assert torch.allclose(turned.image(_view(180, 0)), bg.image(_view(0, 0)), atol=1e-4)


def test_the_map_is_in_world_directions() -> None:
    """A bright patch at world +x (longitude +90 degrees) is ahead of a camera turned to +x and not of
    one turned to -x; one towards -y (up, OpenCV) ahead of a camera pitched up and not down."""
    east = Background.uniform(torch.tensor([0.2, 0.2, 0.2]))
    east.texture[:, LAT_CELLS // 2 - 1: LAT_CELLS // 2 + 1, 3 * LON_CELLS // 4 - 1: 3 * LON_CELLS // 4 + 1] = 1.0
    centre = (H // 2, W // 2)
    assert east.image(_view(90, 0))[centre].min() > 0.9 and east.image(_view(-90, 0))[centre].max() < 0.3
    up = Background.uniform(torch.tensor([0.2, 0.2, 0.2]))
    up.texture[:, 2:4] = 1.0  # latitude about -60 degrees: y = -0.87
    # _view's pitch turns the optical axis to (0, -sin p, cos p)
    assert up.image(_view(0, 60))[centre].min() > 0.9 and up.image(_view(0, -60))[centre].max() < 0.3


def test_compositing_matches_the_rasterizer_s_own_background() -> None:
    """Over a uniform map, render's compositing by alpha gives the rasterizer's own background
    term: the same image and the same gradients for the Gaussians (through alpha)."""
    g = torch.Generator().manual_seed(3)
    points = torch.randn(200, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, 4.0])
    params = init_params(points.numpy(), (torch.rand(200, 3, generator=g) * 255).numpy(), 0)
    view, colour = _view(), torch.tensor([0.3, 0.6, 0.1])
    weights = torch.randn(H, W, 3, generator=g)
    ours = render(params, view, 0, background=Background.uniform(colour))
    (ours.rgb * weights).sum().backward()
    ours_grads = {k: v.grad.clone() for k, v in params.items()}
    params.zero_grad()
    p = activated(params)
    proj = project(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"], 0, view.viewmat, view.K, W, H)
    theirs, _ = raster_cpu.rasterize(proj.means2d[0, proj.visible], proj.conics, proj.colors, proj.opacities,
                                     proj.depths, W, H, colour)
    (theirs * weights).sum().backward()
    assert torch.allclose(ours.rgb, theirs, atol=1e-5)
    for k, v in params.items():
        assert torch.allclose(ours_grads[k], v.grad, atol=1e-5, rtol=1e-4), k


def test_one_cell_is_seen_only_in_its_direction() -> None:
    bg = Background.uniform(torch.tensor([0.2, 0.2, 0.2]))
    bg.texture[:, LAT_CELLS // 2, LON_CELLS // 2] = 1.0  # just off the +z axis (longitude 0)
    ahead, behind = bg.image(_view(0, 0)), bg.image(_view(180, 0))
    assert ahead.max() > 0.5 and torch.allclose(behind, torch.full_like(behind, 0.2))


def test_training_learns_the_sky_and_leaves_unseen_directions_at_the_mean() -> None:
    """Photos of sky above the horizon and ground below, nothing drawn: the background learns both
    (one colour could only be their mean), and directions no photo shows keep the photos' mean."""
    sky, ground = torch.tensor([0.3, 0.5, 0.9]), torch.tensor([0.5, 0.4, 0.3])
    photo = torch.empty(H, W, 3)
    photo[: H // 2], photo[H // 2:] = sky, ground
    # Cameras level around the vertical axis; OpenCV's y points down, so the upper half looks up.
    views = [_view(yaw, 0, image=photo) for yaw in range(0, 360, 45)]
    start = Background.mean_of(views)
    bg = Background(start.texture.clone().requires_grad_(True))
    opt = torch.optim.Adam([bg.texture], lr=2e-2)
    params = _no_gaussians()
    for step in range(300):
        v = views[step % len(views)]
        out = render(params, v, 0, background=bg)
        loss = (out.rgb - v.photo()).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        level = bg.image(_view(22.5, 0))  # between the training cameras
        overhead = bg.image(_view(0, 89))  # the pole: outside every photo (their field is 53 degrees tall)
    assert (level[2, W // 2] - sky).abs().max() < 0.05, level[2, W // 2]
    assert (level[-3, W // 2] - ground).abs().max() < 0.05, level[-3, W // 2]
    assert torch.allclose(overhead, start.image(_view(0, 89)), atol=1e-6)


def test_json_round_trip_and_a_wrong_size() -> None:
    bg = Background.uniform(torch.tensor([0.1, 0.2, 0.3]))
    bg.texture[:, 3, 4] = torch.tensor([0.25, 0.5, 0.125])
    again = Background.from_json(bg.to_json())
    assert torch.equal(again.texture, bg.texture)
    with pytest.raises(ValueError, match="cells"):
        Background.from_json({"texture": [[[0.0] * 4] * 2] * 3})
