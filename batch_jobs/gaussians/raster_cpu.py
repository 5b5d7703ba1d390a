"""Our tiled CPU rasterizer for projected 2D Gaussians, with its own backward pass.

The same algorithm as gsplat's CUDA kernels, compiled with numba and run over image tiles in
parallel:

1. Culling: each Gaussian gets the pixel rectangle its alpha >= 1/255 ellipse can reach (an
   exact, opacity-aware bounding box) and the tiles that rectangle touches, nothing else.
2. Binning and depth sorting: one global argsort by depth, then a counting sort by tile, so
   every tile's list is front to back. Memory is O(intersections); no pixel x Gaussian tensor.
3. Forward: front-to-back alpha compositing with early termination (a pixel stops when its
   transmittance would drop to 1e-4; a tile stops when all its pixels have), keeping each
   pixel's final transmittance and last contributor. Each Gaussian visits only the pixels of
   its rectangle, so the work is the Gaussians' footprints, not tile area x list length.
4. Backward: back to front from each pixel's last contributor, recovering the transmittance
   by division. Gradients are summed per (tile, Gaussian) intersection (each tile is one
   thread's), then per Gaussian: no atomics, deterministic.

Rules shared with gsplat (so the two agree to float precision): pixel centres at +0.5,
sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with the conic (a, b, c) = inverse 2D covariance,
alpha = min(0.999, opacity * exp(-sigma)), skipped when sigma < 0 or alpha < 1/255.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def _numba_cache_dir() -> None:
    """numba caches compiled kernels next to this file; in an installed, read-only image it
    cannot, so point it at a temporary directory (set before numba reads its configuration)."""
    if "NUMBA_CACHE_DIR" in os.environ or os.access(Path(__file__).parent, os.W_OK):
        return
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "splatpipe-numba-cache")
    if "numba" in sys.modules:
        sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


_numba_cache_dir()

from numba import njit, prange  # noqa: E402

TILE_SIZE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


@njit(cache=True, inline="always")
def _sigma_max(o: float) -> float:
    """sigma above which alpha = o exp(-sigma) < 1/255, plus slack: a cheap test before exp()."""
    return math.log(max(255.0 * o, 1e-30)) + 1e-3


@njit(cache=True, inline="always")
def _tile_rect(t: int, tiles_x: int, tile: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Tile `t`'s top-left pixel and size (ox, oy, tw, th); edge tiles are cut at the image."""
    ty = t // tiles_x
    tx = t - ty * tiles_x
    ox, oy = tx * tile, ty * tile
    return ox, oy, min(width, ox + tile) - ox, min(height, oy + tile) - oy


@njit(cache=True, inline="always")
def _footprint(g: int, means2d: np.ndarray, conics: np.ndarray, opacities: np.ndarray, prect: np.ndarray,
               ox: int, oy: int, tw: int, th: int) -> tuple:
    """Gaussian `g` in a tile: its pixel rectangle there (x0, x1, y0, y1, inclusive), its centre
    (mx, my), conic (a, b, c), opacity o and `_sigma_max(o)`."""
    o = opacities[g]
    return (max(prect[g, 0], ox), min(prect[g, 2], ox + tw - 1),
            max(prect[g, 1], oy), min(prect[g, 3], oy + th - 1),
            means2d[g, 0], means2d[g, 1], conics[g, 0], conics[g, 1], conics[g, 2], o, _sigma_max(o))


@njit(cache=True)
def _rects(means2d: np.ndarray, conics: np.ndarray, opacities: np.ndarray, width: int, height: int,
           tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Per Gaussian, the pixels its alpha >= 1/255 ellipse can reach and the tiles holding them.

    Returns (pixel rects, tile rects), each [N, 4] int32 (x0, y0, x1, y1) inclusive; x1 < x0
    when culled. Pixel rects are rounded outwards (up to a pixel more); the per-pixel alpha
    test stays exact.
    """
    n = means2d.shape[0]
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    prect = np.empty((n, 4), np.int32)
    trect = np.empty((n, 4), np.int32)
    for g in range(n):
        for q in range(2):
            prect[g, q] = 0
            trect[g, q] = 0
            prect[g, 2 + q] = -1
            trect[g, 2 + q] = -1
        o = opacities[g]
        if not (o * 255.0 > 1.0):
            continue
        a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
        det = a * c - b * b
        if not (det > 0.0):
            continue
        # alpha >= 1/255  <=>  d^T Sigma^-1 d <= 2 ln(255 o); its bounding box has half-widths
        # k sqrt(Sigma_xx), k sqrt(Sigma_yy), with Sigma = inverse of the conic.
        k2 = 2.0 * math.log(255.0 * o)
        hx = math.sqrt(k2 * c / det)
        hy = math.sqrt(k2 * a / det)
        mx, my = means2d[g, 0], means2d[g, 1]
        if not (math.isfinite(mx) and math.isfinite(my) and math.isfinite(hx) and math.isfinite(hy)):
            continue
        # pixel centres px + 0.5 within [mx - hx, mx + hx]; clamp in floats first (no int overflow)
        lo_x, hi_x = mx - hx - 0.5, mx + hx - 0.5
        lo_y, hi_y = my - hy - 0.5, my + hy - 0.5
        if hi_x < 0.0 or hi_y < 0.0 or lo_x > width or lo_y > height:
            continue
        x0 = max(0, math.floor(max(lo_x, 0.0)))
        x1 = min(width - 1, math.ceil(min(hi_x, float(width))))
        y0 = max(0, math.floor(max(lo_y, 0.0)))
        y1 = min(height - 1, math.ceil(min(hi_y, float(height))))
        if x1 < x0 or y1 < y0:
            continue
        prect[g, 0], prect[g, 1], prect[g, 2], prect[g, 3] = x0, y0, x1, y1
        trect[g, 0] = x0 // tile
        trect[g, 1] = y0 // tile
        trect[g, 2] = min(tiles_x - 1, x1 // tile)
        trect[g, 3] = min(tiles_y - 1, y1 // tile)
    return prect, trect


@njit(cache=True)
def _bin_sorted(rects: np.ndarray, depths: np.ndarray, tiles_x: int, tiles_y: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile lists of Gaussian ids, each front to back: (offsets [T+1], ids [M])."""
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, np.int64)
    n = rects.shape[0]
    for g in range(n):
        for ty in range(rects[g, 1], rects[g, 3] + 1):
            for tx in range(rects[g, 0], rects[g, 2] + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    ids = np.empty(offsets[-1], np.int32)
    order = np.argsort(depths)  # then a stable counting sort by tile keeps depth order per tile
    for i in range(n):
        g = order[i]
        for ty in range(rects[g, 1], rects[g, 3] + 1):
            for tx in range(rects[g, 0], rects[g, 2] + 1):
                t = ty * tiles_x + tx
                ids[cursor[t]] = g
                cursor[t] += 1
    return offsets, ids


# Both passes go Gaussian by Gaussian through a tile's list (front to back, or back to front),
# each over only the pixels of its rectangle inside the tile, keeping per-pixel state (the
# transmittance, the colour so far) in tile-sized buffers: the work is the Gaussians' actual
# footprints, not tile area x list length.


@njit(cache=True, parallel=True, fastmath=True)
def _forward(means2d: np.ndarray, conics: np.ndarray, colors: np.ndarray, opacities: np.ndarray,
             background: np.ndarray, prect: np.ndarray, offsets: np.ndarray, ids: np.ndarray, width: int,
             height: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_ch = colors.shape[1]
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    out = np.empty((height, width, n_ch), np.float32)
    t_final = np.empty((height, width), np.float32)
    last = np.empty((height, width), np.int64)
    for t in prange(tiles_x * tiles_y):
        ox, oy, tw, th = _tile_rect(t, tiles_x, tile, width, height)
        start, end = offsets[t], offsets[t + 1]
        trans = np.ones(tile * tile, np.float32)
        acc = np.zeros((tile * tile, n_ch), np.float32)
        used = np.zeros(tile * tile, np.int64)  # local index + 1 of the last contributor
        done = np.zeros(tile * tile, np.bool_)
        n_done = 0
        n_pix = tw * th
        for j in range(end - start):
            if n_done == n_pix:
                break
            g = ids[start + j]
            x0, x1, y0, y1, mx, my, a, b, c, o, smax = _footprint(g, means2d, conics, opacities, prect,
                                                                  ox, oy, tw, th)
            for py in range(y0, y1 + 1):
                dy = my - (py + 0.5)
                row = (py - oy) * tile - ox
                for px in range(x0, x1 + 1):
                    p = row + px
                    if done[p]:
                        continue
                    dx = mx - (px + 0.5)
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < 0.0 or sigma > smax:
                        continue
                    alpha = min(ALPHA_MAX, o * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    next_t = trans[p] * (1.0 - alpha)
                    if next_t <= T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    w = alpha * trans[p]
                    for ch in range(n_ch):
                        acc[p, ch] += w * colors[g, ch]
                    trans[p] = next_t
                    used[p] = j + 1
        for py in range(oy, oy + th):
            for px in range(ox, ox + tw):
                p = (py - oy) * tile + (px - ox)
                for ch in range(n_ch):
                    out[py, px, ch] = acc[p, ch] + trans[p] * background[ch]
                t_final[py, px] = trans[p]
                last[py, px] = start + used[p]
    return out, t_final, last


@njit(cache=True, parallel=True, fastmath=True)
def _backward_isect(means2d: np.ndarray, conics: np.ndarray, colors: np.ndarray, opacities: np.ndarray,
                    background: np.ndarray, prect: np.ndarray, offsets: np.ndarray, ids: np.ndarray,
                    t_final: np.ndarray, last: np.ndarray, grad_out: np.ndarray, grad_alpha: np.ndarray,
                    width: int, height: int, tile: int) -> np.ndarray:
    """Per-intersection gradients [M, 2 + 3 + C + 1]: means2d, conics, colors, opacity."""
    n_ch = colors.shape[1]
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    n_isect = ids.shape[0]
    gi = np.zeros((n_isect, 6 + n_ch), np.float32)
    for t in prange(tiles_x * tiles_y):
        ox, oy, tw, th = _tile_rect(t, tiles_x, tile, width, height)
        start = offsets[t]
        trans = np.zeros(tile * tile, np.float32)  # T behind the current Gaussian, per pixel
        stop = np.zeros(tile * tile, np.int64)
        buf = np.zeros((tile * tile, n_ch), np.float32)  # colour composited behind it
        gc = np.zeros((tile * tile, n_ch), np.float32)
        ga = np.zeros(tile * tile, np.float32)  # d loss / d final T (alpha and background terms)
        tf = np.zeros(tile * tile, np.float32)
        max_stop = 0
        for py in range(oy, oy + th):
            for px in range(ox, ox + tw):
                p = (py - oy) * tile + (px - ox)
                stop[p] = last[py, px] - start
                max_stop = max(max_stop, stop[p])
                trans[p] = t_final[py, px]
                tf[p] = t_final[py, px]
                bg_dot = 0.0
                for ch in range(n_ch):
                    gc[p, ch] = grad_out[py, px, ch]
                    bg_dot += background[ch] * gc[p, ch]
                ga[p] = grad_alpha[py, px] - bg_dot
        lg = np.empty(6 + n_ch, np.float32)
        for j in range(max_stop - 1, -1, -1):
            g = ids[start + j]
            x0, x1, y0, y1, mx, my, a, b, c, o, smax = _footprint(g, means2d, conics, opacities, prect,
                                                                  ox, oy, tw, th)
            for q in range(6 + n_ch):
                lg[q] = 0.0
            for py in range(y0, y1 + 1):
                dy = my - (py + 0.5)
                row = (py - oy) * tile - ox
                for px in range(x0, x1 + 1):
                    p = row + px
                    if j >= stop[p]:
                        continue
                    dx = mx - (px + 0.5)
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < 0.0 or sigma > smax:
                        continue
                    vis = math.exp(-sigma)
                    alpha = min(ALPHA_MAX, o * vis)
                    if alpha < ALPHA_MIN:
                        continue
                    ra = 1.0 / (1.0 - alpha)
                    trans[p] *= ra  # transmittance in front of this Gaussian
                    T = trans[p]
                    fac = alpha * T
                    v_alpha = 0.0
                    for ch in range(n_ch):
                        lg[5 + ch] += fac * gc[p, ch]
                        v_alpha += (colors[g, ch] * T - buf[p, ch] * ra) * gc[p, ch]
                        buf[p, ch] += colors[g, ch] * fac
                    v_alpha += tf[p] * ra * ga[p]
                    if o * vis <= ALPHA_MAX:  # the clamp has no gradient
                        v_sigma = -o * vis * v_alpha
                        lg[0] += v_sigma * (a * dx + b * dy)
                        lg[1] += v_sigma * (b * dx + c * dy)
                        lg[2] += 0.5 * v_sigma * dx * dx
                        lg[3] += v_sigma * dx * dy
                        lg[4] += 0.5 * v_sigma * dy * dy
                        lg[5 + n_ch] += vis * v_alpha
            for q in range(6 + n_ch):
                gi[start + j, q] = lg[q]
    return gi


@njit(cache=True)
def _reduce(gi: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, gi.shape[1]), np.float32)
    for j in range(ids.shape[0]):
        g = ids[j]
        for q in range(gi.shape[1]):
            out[g, q] += gi[j, q]
    return out


@dataclass
class TileBins:
    """The culling and sorting result of one rasterization (kept for the backward pass)."""

    offsets: np.ndarray  # [tiles + 1] int64
    ids: np.ndarray  # [intersections] int32, per tile front to back
    prect: np.ndarray  # [N, 4] int32 pixel rectangle of each Gaussian (x0, y0, x1, y1)
    tiles_x: int
    tiles_y: int

    @property
    def n_intersections(self) -> int:
        return int(self.ids.shape[0])


def bin_gaussians(means2d: np.ndarray, conics: np.ndarray, opacities: np.ndarray, depths: np.ndarray,
                  width: int, height: int, tile: int = TILE_SIZE) -> TileBins:
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    prect, trect = _rects(means2d, conics, opacities, width, height, tile)
    offsets, ids = _bin_sorted(trect, depths, tiles_x, tiles_y)
    return TileBins(offsets, ids, prect, tiles_x, tiles_y)


def _np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())


class _RasterizeTiles(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor,
                opacities: torch.Tensor, background: torch.Tensor, depths: torch.Tensor, width: int,
                height: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        m, cn, col, op, bg = _np(means2d), _np(conics), _np(colors), _np(opacities), _np(background)
        bins = bin_gaussians(m, cn, op, _np(depths), width, height, tile)
        out, t_final, last = _forward(m, cn, col, op, bg, bins.prect, bins.offsets, bins.ids, width, height, tile)
        ctx.save_for_backward(means2d, conics, colors, opacities, background)
        ctx.raster = (bins, t_final, last, width, height, tile)
        alpha = torch.from_numpy(1.0 - t_final)[..., None]
        return torch.from_numpy(out), alpha

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_alpha: torch.Tensor):
        means2d, conics, colors, opacities, background = ctx.saved_tensors
        bins, t_final, last, width, height, tile = ctx.raster
        n, n_ch = colors.shape
        gi = _backward_isect(_np(means2d), _np(conics), _np(colors), _np(opacities), _np(background),
                             bins.prect, bins.offsets, bins.ids, t_final, last, _np(grad_out),
                             _np(grad_alpha[..., 0]), width, height, tile)
        g = torch.from_numpy(_reduce(gi, bins.ids, n))
        grad_bg = None
        if ctx.needs_input_grad[4]:
            # d out / d background = final transmittance, per pixel.
            grad_bg = (grad_out * torch.from_numpy(t_final)[..., None]).sum(dim=(0, 1))
        return (g[:, 0:2], g[:, 2:5], g[:, 5:5 + n_ch], g[:, 5 + n_ch], grad_bg, None, None, None, None)


def rasterize(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
              depths: torch.Tensor, width: int, height: int, background: torch.Tensor | None = None,
              tile: int = TILE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite N projected Gaussians into an image.

    means2d [N, 2] pixels, conics [N, 3] (inverse 2D covariance a, b, c), colors [N, C],
    opacities [N] in (0, 1), depths [N] (sort key only). Returns (image [H, W, C],
    alpha [H, W, 1]); differentiable in means2d, conics, colors, opacities and background.
    `background` (one colour, as gsplat's `backgrounds`) serves the parity tests with gsplat; the
    renderer composites its map of directions by alpha instead (render.py).
    """
    if background is None:
        background = torch.zeros(colors.shape[1], dtype=torch.float32)
    return _RasterizeTiles.apply(means2d, conics, colors, opacities, background, depths.detach(), width, height,
                                 tile)


def intersections(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, depths: torch.Tensor,
                  width: int, height: int, tile: int = TILE_SIZE) -> int:
    """How many (tile, Gaussian) pairs a rasterization would process (for reports and benches)."""
    return bin_gaussians(_np(means2d), _np(conics), _np(opacities), _np(depths), width, height, tile).n_intersections

