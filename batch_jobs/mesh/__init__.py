"""The mesh stage: a coloured triangle mesh fused (TSDF) from depths rendered out of the trained splat."""
