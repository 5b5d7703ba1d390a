"""The worst-case step count of one execution of workflows/reconstruct.yaml stays under Workflows'
limit of 100,000 steps per execution (https://cloud.google.com/workflows/quotas): computed from
the YAML itself and the stage registry, not asserted by hand.

The model (an upper bound):
- a step executed once counts 1; a `call` of a subworkflow of this file counts 1 plus that
  subworkflow's steps; a `switch` counts 1 plus its longest branch; a `try` counts its body plus
  its `except` steps, and a `retry` policy adds one step per retry it may make;
- a `for` loop over the request's stages counts its body once per stage of the registry, any
  other `for` its body times ITERATIONS_BOUND (a stage's outputs or warnings, a job's status
  events: a handful each);
- every stage runs, each waiting out its whole deadline (`wait_seconds`, from the Job bodies
  dispatch builds, one deadline across all its jobs) with polls that back off from 2 s to a
  minute, and every job re-created as often as run_job's retry allows, each new job's polls
  starting again from 2 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core import stages
from functions.dispatch.batch_job import BatchSettings, stage_jobs

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "reconstruct.yaml"
STEP_LIMIT = 100_000
ITERATIONS_BOUND = 20
DEFAULT_RETRY_MAX = 5  # http.default_retry's max_retries (https://cloud.google.com/workflows/docs/reference/stdlib/http/default_retry)


STAGE_LOOPS = ('${stages}', '${default(map.get(args, "disabled"), [])}')


class Counter:
    def __init__(self, source: dict[str, Any]) -> None:
        self.subs = source

    def sub(self, name: str) -> int:
        return self.steps(self.subs[name]["steps"])

    def steps(self, steps: list[dict[str, Any]]) -> int:
        return sum(self.step(body) for entry in steps for body in entry.values())

    def step(self, body: dict[str, Any]) -> int:
        if "try" in body:
            tried = body["try"]
            n = self.steps(tried["steps"]) if "steps" in tried else self.step(tried)
            retry = body.get("retry")
            if retry is not None:
                retries = retry.get("max_retries", DEFAULT_RETRY_MAX) if isinstance(retry, dict) else DEFAULT_RETRY_MAX
                n *= 1 + int(retries)
            if "except" in body:
                n += self.steps(body["except"]["steps"])
            return n
        if "switch" in body:
            return 1 + max(self.steps(c["steps"]) if "steps" in c else 1 for c in body["switch"])
        if "for" in body:
            bound = len(stages.ORDER) if body["for"]["in"] in STAGE_LOOPS else ITERATIONS_BOUND
            return 1 + bound * self.steps(body["for"]["steps"])
        if "steps" in body:
            return self.steps(body["steps"])
        if "call" in body and body["call"] in self.subs:
            return 1 + self.sub(body["call"])
        return 1


def _polls(seconds: float) -> int:
    """Polls of one wait loop over `seconds`: sleeps of 2, 4, 8, ... s, then a minute each."""
    n, waited, delay = 0, 0.0, 2.0
    while waited <= seconds:
        waited += delay
        n += 1
        delay = min(delay * 2, 60.0)
    return n


def _loop(source: dict[str, Any]) -> list[dict[str, Any]]:
    """The wait loop's steps in run_job (from `pause` to the jump back)."""
    run_job = source["run_job"]["steps"]
    wait = next(e["wait"] for e in run_job if "wait" in e)
    steps = wait["try"]["steps"]
    start = next(i for i, e in enumerate(steps) if "pause" in e)
    return steps[start:]


def worst_case_steps() -> tuple[int, dict[str, int]]:
    source = yaml.safe_load(WORKFLOW.read_text())
    c = Counter(source)
    per_poll = c.steps(_loop(source))
    run_job_retries = next(e["run_job"] for e in source["run_stage"]["steps"] if "run_job" in e)["retry"]["max_retries"]
    jobs = 1 + int(run_job_retries)
    bs = BatchSettings(project="p", region="us-central1", job_image="img", data_bucket="b")
    # main once, with every stage's run_stage (each of its jobs polled once) ...
    total = c.sub("main")
    # ... and every further poll of every job of every stage, in the worst preset.
    per_stage: dict[str, int] = {}
    for preset in stages.PRESETS:
        spec = stage_jobs(list(stages.ORDER), "r", "gs://b/jobs/r", {"preset": preset}, 0, bs)["jobs"]
        for name, job in spec.items():
            polls = _polls(job["wait_seconds"]) + jobs * _polls(60)  # each new job backs off from 2 s again
            per_stage[name] = max(per_stage.get(name, 0), polls * per_poll)
    return total + sum(per_stage.values()), per_stage


def test_the_worst_case_execution_stays_under_the_step_limit() -> None:
    total, per_stage = worst_case_steps()
    print(f"\nworst case {total} steps ({', '.join(f'{k} {v}' for k, v in per_stage.items())}) of {STEP_LIMIT}")
    assert total < STEP_LIMIT, per_stage


def test_the_model_sees_the_loop() -> None:
    """The count is of the real loop: a poll reads the job and the request's state, sleeps and jumps back."""
    names = [k for e in _loop(yaml.safe_load(WORKFLOW.read_text())) for k in e]
    assert names[0] == "pause" and "look" in names and "still_wanted" in names and names[-1] == "poll_again"
    assert _polls(60) == 5 and _polls(3600) == 5 + 59  # 2+4+8+16+32 s, then a minute each
