"""What the splat stage does at each checkpoint, through the stage's own writers: a small SPZ of
the current Gaussians (batch_jobs.gaussians.spz, as `splat/scene.spz`) written to
`{workspace}/splat/latest.spz` by batch_jobs.storage, then `latest_splat_at` and
`latest_splat_step` noted in the stage's status by batch_jobs.progress (the Firestore sink)."""

from __future__ import annotations

import datetime as dt
import gzip

import numpy as np

from batch_jobs import storage
from batch_jobs.gaussians.spz import encode_spz
from batch_jobs.progress import FirestoreSink, ProgressReporter
from core.record import STAGE_LATEST_SPLAT_KEY, STAGE_LATEST_SPLAT_STEP_KEY
from core.workspace import LATEST_SPLAT

PROJECT = "splatpipe-local"


def small_spz(n: int, seed: int, radius: float = 1.0) -> bytes:
    """A valid SPZ v3 file of `n` coloured Gaussians on a sphere shell in front of the origin."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    arrays = {"means": d * radius + np.array([0.0, 0.0, 3.0], np.float32),
              "scales": np.full((n, 3), np.log(0.04 * radius), np.float32),
              "quats": q / np.linalg.norm(q, axis=1, keepdims=True),
              "opacities": np.full(n, 3.0, np.float32),
              "sh0": rng.uniform(-1.5, 1.5, size=(n, 1, 3)).astype(np.float32),
              "shN": np.zeros((n, 3, 3), np.float32)}
    return gzip.compress(encode_spz(arrays, version=3), compresslevel=6)


def publish_snapshot(workspace: str, request_id: str, step: int, data: bytes) -> None:
    """The splat stage's checkpoint side effects, in its order: the file first, then the notes."""
    storage.write_bytes(storage.join(workspace, LATEST_SPLAT), data, "application/octet-stream")
    progress = ProgressReporter("splat", [FirestoreSink(request_id, PROJECT)])
    progress.note(STAGE_LATEST_SPLAT_STEP_KEY, step)
    progress.note(STAGE_LATEST_SPLAT_KEY, dt.datetime.now(dt.UTC).isoformat())
