"""Variable validation, evaluated by Terraform itself: variables.tf alone (no provider) is planned
with the values to check. gpu_count must be what the GPU machine type carries, and Terraform and
the dispatch function (functions.dispatch.batch_job.check_gpus) agree on every machine type both know."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from tfmodel import TF_DIR, TfConfig

from functions.dispatch import batch_job
from core import stages
from functions.config import Settings


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH")
    work = tmp_path_factory.mktemp("variables")
    shutil.copy(TF_DIR / "variables.tf", work / "variables.tf")
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_DATA_DIR": str(work / ".terraform")}
    subprocess.run([terraform, "init", "-input=false", "-no-color"], cwd=work, env=env, check=True,
                   capture_output=True, timeout=60)

    def run(**values: object) -> tuple[bool, str]:
        args = [f"-var={k}={v}" for k, v in {"project_id": "p", **values}.items()]
        proc = subprocess.run([terraform, "plan", "-input=false", "-no-color", "-lock=false", *args], cwd=work,
                              env=env, capture_output=True, text=True, timeout=60)
        return proc.returncode == 0, proc.stdout + proc.stderr

    return run


def _python_accepts(machine_type: str, gpu_type: str, gpu_count: int) -> bool:
    try:
        batch_job.check_gpus(machine_type, gpu_type, gpu_count)
    except batch_job.BatchConfigError:
        return False
    return True


CASES = [
    ("g2-standard-8", "nvidia-l4", 1, True),
    ("g2-standard-8", "nvidia-l4", 2, False),  # one L4 on g2-standard-8
    ("g2-standard-24", "nvidia-l4", 2, True),
    ("g2-standard-32", "nvidia-l4", 1, True),
    ("g2-standard-48", "nvidia-l4", 4, True),
    ("g2-standard-96", "nvidia-l4", 8, True),
    ("g2-standard-8", "nvidia-tesla-t4", 1, False),  # G2 carries L4s only
    ("a2-highgpu-2g", "nvidia-tesla-a100", 2, True),
    ("a2-highgpu-2g", "nvidia-tesla-a100", 1, False),
    ("a2-highgpu-1g", "nvidia-l4", 1, False),  # L4s come on G2 only
    ("a2-highgpu-2g", "nvidia-tesla-t4", 2, False),  # A2 carries A100s
    ("n1-standard-8", "nvidia-tesla-t4", 4, True),
    ("n1-standard-8", "nvidia-tesla-t4", 8, False),
    ("n1-standard-8", "nvidia-tesla-t4", 3, False),
    ("n1-standard-16", "nvidia-tesla-v100", 8, True),
    ("n2-standard-8", "nvidia-tesla-t4", 1, False),  # N2 takes no GPUs
]


@pytest.mark.parametrize(("machine_type", "gpu_type", "gpu_count", "valid"), CASES)
def test_gpu_count_must_match_the_machine_type(plan, machine_type, gpu_type, gpu_count, valid):
    ok, out = plan(gpu_machine_type=machine_type, gpu_type=gpu_type, gpu_count=gpu_count)
    assert ok == valid, out[-2000:]
    if not valid:
        assert "Invalid value for variable" in out, out[-2000:]
    # The dispatch function refuses (or accepts) the same settings at run time.
    assert _python_accepts(machine_type, gpu_type, gpu_count) == valid


def test_terraform_and_dispatch_agree_on_every_gpu_machine_dispatch_knows(plan):
    for machine_type, (_, _, gpu_type, count) in batch_job._GPU_MACHINES.items():
        other_type = "nvidia-tesla-t4"  # a model no accelerator-optimized type carries
        for kind, n in ((gpu_type, count), (gpu_type, count + 1), (other_type, count)):
            ok, out = plan(gpu_machine_type=machine_type, gpu_type=kind, gpu_count=n)
            want = (kind, n) == (gpu_type, count)
            assert ok == want == _python_accepts(machine_type, kind, n), (machine_type, kind, n, out[-1500:])


def test_the_defaults_are_the_dispatch_functions():
    # Terraform cannot import Python: the variables' defaults and the dispatch function's
    # (functions.dispatch.batch_job.BatchSettings, functions.config.Settings) are checked to agree.
    defaults = {name: var.get("default") for name, var in TfConfig().variables.items()}
    assert defaults["cpu_machine_type"] == batch_job.BatchSettings.cpu_machine_type
    assert defaults["gpu_machine_type"] == batch_job.BatchSettings.gpu_machine_type
    assert defaults["gpu_type"] == batch_job.BatchSettings.gpu_type
    assert defaults["gpu_count"] == batch_job.BatchSettings.gpu_count
    assert defaults["depth_model"] == stages.DEFAULT_DEPTH_MODEL
    assert defaults["region"] == Settings.region


def test_defaults_are_valid(plan):
    ok, out = plan()
    assert ok, out[-2000:]

