"""splatpipe data plane: the Batch job stages (frames, sfm, depth, splat, mesh) and their runner."""
