"""The splat stage: Gaussian Splatting training (batch_jobs.gaussians) on the sfm model, with
checkpoints, snapshots and held-out evaluation."""
