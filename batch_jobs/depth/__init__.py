"""The depth stage: monocular depth (Depth-Anything-V2) per image, aligned to the sparse model."""
