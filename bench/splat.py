"""Benchmark: our tiled CPU rasterizer vs a naive dense PyTorch rasterizer, forward + backward.

Both rasterize the same projected Gaussians (the synthetic scene's surface, initialised as the
splat stage initialises them from SfM points) into the same camera, and back-propagate the same
image gradient; the projection (gsplat's reference functions) is done once, outside the timing.
The dense baseline pairs every pixel with every Gaussian (chunked over pixels), so it is only
run where that fits in memory; our rasterizer is also timed at the preview preset's size.

    python bench/splat.py [--gaussians 6000] [--width 160] [--height 120] [--repeats 5]

Prints steps/s (one step = forward + backward) of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Run as a script, sys.path[0] is bench/ (whose modules may shadow the standard library's): use the repo.
sys.path[0] = str(Path(__file__).resolve().parents[1])
from batch_jobs import cpu_malloc  # noqa: E402

cpu_malloc.reexec_unless_set()

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from batch_jobs.gaussians import raster_cpu  # noqa: E402
from batch_jobs.gaussians.params import activated, init_params  # noqa: E402
from batch_jobs.gaussians.projection import project  # noqa: E402
from emulator.synthetic_scene import SyntheticScene  # noqa: E402
from tests.batch_jobs.raster_dense import rasterize_dense  # noqa: E402


def projected_scene(n: int, width: int, height: int) -> tuple[dict[str, torch.Tensor], int]:
    """2D Gaussians of the synthetic scene seen from one orbit camera (detached leaves)."""
    scene = SyntheticScene(7)
    rng = np.random.default_rng(0)
    pts = scene.sample_surface(n, seed=3)
    params = init_params(pts, rng.integers(0, 256, (len(pts), 3)), sh_degree=0, init_opacity=0.5)
    cam = scene.orbit_cameras(9, width, height)[4]
    K = torch.tensor(cam.K, dtype=torch.float32)
    vm = torch.eye(4)
    vm[:3, :3] = torch.tensor(cam.R, dtype=torch.float32)
    vm[:3, 3] = torch.tensor(cam.t, dtype=torch.float32)
    with torch.no_grad():
        p = activated(params)
        pr = project(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"], 0, vm, K, width, height)
    inputs = {"means2d": pr.means2d[0, pr.visible].contiguous(), "conics": pr.conics.contiguous(),
              "colors": pr.colors.contiguous(), "opacities": pr.opacities.contiguous(), "depths": pr.depths}
    return inputs, int(pr.visible.numel())


def steps_per_s(fn, inputs: dict[str, torch.Tensor], width: int, height: int, repeats: int) -> float:
    grad = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        leaves = {k: v.clone().requires_grad_(k != "depths") for k, v in inputs.items()}
        img, alpha = fn(leaves["means2d"], leaves["conics"], leaves["colors"], leaves["opacities"],
                        leaves["depths"], width, height)
        ((img * grad).sum() + alpha.sum()).backward()

    step()  # warm-up (numba loads its compiled kernels; allocator settles)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, default=6000, help="Gaussians in the scene (before culling)")
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preview-gaussians", type=int, default=40_000, help="ours only, at 320x240")
    args = ap.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"{numba.get_num_threads()} numba threads, {os.cpu_count()} CPUs")
    inputs, n_vis = projected_scene(args.gaussians, args.width, args.height)
    n_isect = raster_cpu.intersections(inputs["means2d"], inputs["conics"], inputs["opacities"], inputs["depths"],
                                       args.width, args.height)
    print(f"scene: {args.gaussians} Gaussians, {n_vis} visible, {args.width}x{args.height} px, "
          f"{n_isect} tile intersections vs {n_vis * args.width * args.height} dense pairs")
    ours = steps_per_s(raster_cpu.rasterize, inputs, args.width, args.height, args.repeats)
    dense = steps_per_s(rasterize_dense, inputs, args.width, args.height, max(1, args.repeats // 2))
    print(f"{'rasterizer':<34}{'steps/s (fwd+bwd)':>20}")
    print(f"{'tiled CPU (ours, numba)':<34}{ours:>20.2f}")
    print(f"{'dense PyTorch (naive baseline)':<34}{dense:>20.3f}")
    print(f"ratio: {ours / dense:.1f}x  (goal >= 10x)")

    big, n_big = projected_scene(args.preview_gaussians, 320, 240)
    rate = steps_per_s(raster_cpu.rasterize, big, 320, 240, args.repeats)
    print(f"ours at the preview size ({args.preview_gaussians} Gaussians, {n_big} visible, 320x240): "
          f"{rate:.2f} steps/s (dense would need {n_big * 320 * 240 * 4 / 1e9:.0f} GB per pairwise tensor)")


if __name__ == "__main__":
    main()
