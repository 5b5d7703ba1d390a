"""The names of the files in a request's workspace (`gs://{data}/jobs/{request_id}/`) that both
planes read: `request.json` (`Record.request_json`, what every stage reads first; written by
functions.dispatch.request_file), the stages' markers, and what a running stage rewrites."""

from __future__ import annotations

REQUEST_FILE = "request.json"
SUCCESS_FILE = "_SUCCESS.json"
"""A stage's completion marker, `{workspace}/{stage}/_SUCCESS.json`: while it matches, a rerun skips the stage."""
ERROR_FILE = "_ERROR.json"
"""A failed stage's `{code, message, stage, retryable}`, `{workspace}/{stage}/_ERROR.json`."""
LIVE_PREVIEW = "splat/live_preview.png"
"""The splat stage's latest render while it trains (rewritten every few hundred steps; not an output)."""
LATEST_SPLAT = "splat/latest.spz"
"""The splat stage's current Gaussians as SPZ while it trains (rewritten at each checkpoint; not an
output of the stage: the status's `stages.splat.latest_splat_step` says which step it holds)."""
CHECKPOINTS = "checkpoints"
"""`{workspace}/checkpoints/{stage}/`: a stage's resumable state while it runs (outside `{stage}/`,
which the runner clears when the stage starts); deleted when the stage succeeds."""
