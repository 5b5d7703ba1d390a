"""Training checkpoints: the whole state of a splat run, so a Spot preemption costs minutes.

A checkpoint is one file `{workspace}/checkpoints/splat/step-{step:08d}.pt` (core.workspace
CHECKPOINTS; outside `splat/`, which the runner clears when the stage starts) holding the
trainer's state (`trainer.Trainer.state_dict`: parameters, optimiser and scheduler state, the
densification strategy's state, the background, the view order and every random generator)
and the digest of the stage's inputs and parameters (the runner's `key_digest`). It is
published by a second write, `latest.json` = `{step, file, sha256, digest, bytes}`: a file is
read only through a pointer whose checksum it matches, so a half-written checkpoint is never
read (each write is itself atomic: a rename locally, one object upload on Cloud Storage). At
most KEEP files are kept; the stage deletes them all when it succeeds.

A stage that starts and finds a pointer whose digest is not its own ignores it and says so in
the log: the inputs or the parameters changed, and the run starts from step 0.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from batch_jobs import storage

log = logging.getLogger("batch_jobs.gaussians.checkpoint")

FORMAT = 1
KEEP = 2  # checkpoint files kept: the newest and the one before
POINTER = "latest.json"
_FILE = re.compile(r"step-(\d{8})\.pt")


@dataclass(frozen=True)
class Saved:
    """What one save cost."""

    step: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Loaded:
    step: int
    state: dict[str, Any]


class CheckpointStore:
    """The checkpoints of one stage run under `prefix` (a local folder or a gs:// prefix)."""

    def __init__(self, prefix: str, digest: str) -> None:
        self.prefix = prefix
        self.digest = digest

    def save(self, step: int, state: dict[str, Any]) -> Saved:
        import torch

        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "digest": self.digest, "step": step, "state": state}, buf)
        data = buf.getvalue()
        name = f"step-{step:08d}.pt"
        storage.write_bytes(storage.join(self.prefix, name), data)
        storage.write_json(storage.join(self.prefix, POINTER), {
            "format": FORMAT, "step": step, "file": name, "sha256": hashlib.sha256(data).hexdigest(),
            "digest": self.digest, "bytes": len(data), "written_at": dt.datetime.now(dt.UTC).isoformat()})
        # Only older files go: whatever else is here is never the one just published.
        older = [f for f in self._files() if int(_FILE.fullmatch(f).group(1)) < step]  # type: ignore[union-attr]
        for old in older[:max(0, len(older) - (KEEP - 1))]:
            storage.delete(storage.join(self.prefix, old))
        return Saved(step, len(data), time.perf_counter() - t0)

    def load(self) -> Loaded | None:
        """The published checkpoint when it is this run's (same digest) and intact, else None."""
        import torch

        pointer_uri = storage.join(self.prefix, POINTER)
        try:
            if not storage.exists(pointer_uri):
                return None
            pointer = storage.read_json(pointer_uri)
        except Exception as exc:  # an unreadable pointer: start afresh, the run is still right
            log.warning("checkpoint pointer %s unreadable (%s); starting from step 0", pointer_uri, exc)
            self._discard()
            return None
        if pointer.get("digest") != self.digest or pointer.get("format") != FORMAT:
            log.warning("checkpoint at step %s ignored: it was made from other inputs or parameters "
                        "(digest %s, this run's %s); starting from step 0", pointer.get("step"),
                        str(pointer.get("digest"))[:12], self.digest[:12])
            self._discard()
            return None
        try:
            data = storage.read_bytes(storage.join(self.prefix, str(pointer["file"])))
            if hashlib.sha256(data).hexdigest() != pointer["sha256"]:
                raise ValueError("checksum mismatch")
            doc = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            log.warning("checkpoint %s unusable (%s); starting from step 0", pointer.get("file"), exc)
            self._discard()
            return None
        if doc.get("digest") != self.digest:
            log.warning("checkpoint %s holds another run's digest; starting from step 0", pointer["file"])
            self._discard()
            return None
        log.info("resuming from the checkpoint at step %d", doc["step"])
        return Loaded(int(doc["step"]), doc["state"])

    def clear(self) -> None:
        storage.delete_tree(self.prefix)

    def _discard(self) -> None:
        """Remove what cannot be resumed from, so its files never crowd out this run's."""
        self.clear()

    def _files(self) -> list[str]:
        """Checkpoint files, oldest first."""
        return sorted(n for n in storage.list_files(self.prefix) if _FILE.fullmatch(n))
