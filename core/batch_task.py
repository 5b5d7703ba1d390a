"""The contract between a stage's Cloud Batch task and the stage runner inside it: the
environment the job body sets and the exit codes both sides read.

functions.dispatch.batch_job writes them into the Job bodies; batch_jobs.runner and
batch_jobs.errors read them inside the task; the local Batch runner (emulator.batch.runner)
reports Batch's reserved ones.
"""

from __future__ import annotations

GPUS_ENV = "SPLATPIPE_GPUS"
"""Set in a job's environment to the GPUs its VM carries ("0" on CPU machines)."""

# The exit codes of `python -m batch_jobs run`.
EXIT_OK = 0
EXIT_RETRYABLE = 1
"""A failure a retry could help (batch_jobs.errors.StageError retryable, or an unexpected one)."""
EXIT_BAD_INPUT = 3
"""Bad input: the Batch job body fails the task without a retry (a lifecycle policy on the exit code)."""
# Batch's reserved exit codes (https://cloud.google.com/batch/docs/troubleshooting#reserved-exit-codes);
# the workflow's classify_failure names the same two.
EXIT_PREEMPTED = 50001
"""The task's Spot VM was preempted: transient, the workflow creates the job again."""
EXIT_MAX_RUN_DURATION = 50005
"""Batch's reserved exit code for a task past its maxRunDuration: a rerun would time out again.
A lifecycle policy may name Batch's own exit codes
(https://cloud.google.com/batch/docs/automate-task-retries)."""
NO_RETRY_EXIT_CODES = (EXIT_BAD_INPUT, EXIT_MAX_RUN_DURATION)
