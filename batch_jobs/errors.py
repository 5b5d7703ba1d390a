"""Stage failures with a code, a message for people, and whether a retry could help."""

from __future__ import annotations

from typing import Any


class StageError(Exception):
    """A failure the stage understands. `retryable=False` for bad input."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def to_dict(self, stage: str) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "stage": stage, "retryable": self.retryable}


# Codes shared by the runner; stages add their own (e.g. NO_VIDEO_STREAM, TOO_FEW_REGISTERED).
BAD_REQUEST = "BAD_REQUEST"  # request.json missing or malformed, bad options
MISSING_INPUT = "MISSING_INPUT"  # an earlier stage's outputs are not there
INPUT_NOT_FOUND = "INPUT_NOT_FOUND"  # the request's input URI does not exist
INTERNAL = "INTERNAL"  # an unexpected exception (retryable)
NO_CUDA = "no_cuda"  # the Batch job gave the VM a GPU, CUDA cannot see it (not retried)
