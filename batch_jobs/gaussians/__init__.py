"""3D Gaussian Splatting machinery for the `splat` and `mesh` stages.

One concept per module: `params` (the Gaussians and their initialisation), `camera` (training
views), `projection` (3D -> 2D on CPU through gsplat's PyTorch reference functions),
`raster_cpu` (our tiled CPU rasterizer with its own backward; its dense test oracle is
tests/batch_jobs/raster_dense.py), `render` (CUDA through
`gsplat.rasterization`, CPU through projection + raster_cpu), `losses`, `strategy`
(gsplat's densification strategies, made to work on CPU tensors), `trainer`, `evaluate`,
`ply` and `spz` (exports).
"""
