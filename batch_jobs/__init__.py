"""splatpipe data plane: a package per Batch job stage (frames, sfm, depth, splat, mesh), their
runner, and what several stages share (storage, progress, the sparse model, the Gaussians)."""
