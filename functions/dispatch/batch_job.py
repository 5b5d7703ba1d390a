"""Cloud Batch Job bodies for the stages, built from the stage registry (core.stages).

`dispatch` builds one body per stage it starts and passes them in the workflow's argument
(`jobs`); the workflow only creates, waits for and reads these jobs. Each body is the Batch v1
`Job` JSON (https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs):

- one task on one VM: the job image runs `run STAGE --workspace URI --request-id ID`;
- `computeResource` asks for the whole machine (Batch otherwise assumes 2 vCPUs and 2 GiB per
  task: https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs#ComputeResource);
- GPU stages: the accelerators the machine type carries, `installGpuDrivers`, and the
  `batch-debian` boot image. Container jobs default to a Container-Optimized OS image, where the
  driver installed on the VM is not visible in the container unless its directories are mounted;
  on the Batch Debian image Batch installs the driver and exposes it to container runnables
  (https://cloud.google.com/batch/docs/create-run-job-gpus,
  https://cloud.google.com/batch/docs/vm-os-environment-overview). The stage runner checks CUDA
  before it starts (GPUS_ENV; batch_jobs.runner.require_gpus) and fails with `no_cuda`, naming
  the driver's CUDA version against the image's. Batch installs the driver its installer pins
  (GoogleCloudPlatform/compute-gpu-installation) unless `accelerators[].driverVersion` names one
  ("Batch will install the specific accelerator driver if qualified": the Batch v1
  `AllocationPolicy.Accelerator` reference); `GPU_DRIVER_VERSION` sets it. The image is CUDA
  12.8 (batch_jobs/Dockerfile), which needs a driver of the 12.x line (CUDA minor version
  compatibility; 570 or newer for the 12.8 features);
- `maxRunDuration` and `maxRetryCount` from the registry; exit code 3 (bad input) and 50005
  (past maxRunDuration) fail the task without a retry (a lifecycle policy);
- Spot or standard VMs, the job's service account and network, labels, Cloud Logging.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core import stages
from core.batch_task import (  # noqa: F401  (read here and by the tests as batch_job.*)
    EXIT_BAD_INPUT,
    EXIT_MAX_RUN_DURATION,
    EXIT_PREEMPTED,
    GPUS_ENV,
    NO_RETRY_EXIT_CODES,
)
from core.pricing import PROVISIONING_MODELS  # the models a price table prices, and Batch knows
from core.record import PRIORITY_MAX, PRIORITY_MIN
from functions.config import Settings

BOOT_DISK_GB = 100
# A Batch image short name for the boot disk (AllocationPolicy.Disk.image:
# https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs#Disk).
GPU_BOOT_IMAGE = "batch-debian"
# Job.priority is in [0, 100), higher first
# (https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs#Job); the queue's
# priorities run from PRIORITY_MIN (first) to PRIORITY_MAX, spread evenly over it.
BATCH_PRIORITY_TOP = 99
_PRIORITY_STEP = BATCH_PRIORITY_TOP // max(1, PRIORITY_MAX - PRIORITY_MIN)
# What the task asks of the VM: all of its vCPUs and most of its memory (the OS, the Batch agent
# and the container runtime keep the rest).
MEMORY_FRACTION = 0.9

# Accelerator-optimized machine types carry a fixed number of GPUs:
# https://cloud.google.com/compute/docs/accelerator-optimized-machines — g2-standard-N: N vCPUs,
# 4N GiB, L4s; a2-highgpu-Kg: 12K vCPUs, 85K GiB, K A100s.
# name -> (vCPUs, memory GiB, GPU type, GPU count)
_GPU_MACHINES: Mapping[str, tuple[int, float, str, int]] = {
    **{f"g2-standard-{n}": (n, 4 * n, "nvidia-l4", gpus)
       for n, gpus in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8))},
    **{f"a2-highgpu-{k}g": (12 * k, 85 * k, "nvidia-tesla-a100", k) for k in (1, 2, 4, 8)},
}
# N1 machines take attached GPUs in these counts (https://cloud.google.com/compute/docs/gpus).
_N1_GPU_COUNTS: Mapping[str, tuple[int, ...]] = {
    "nvidia-tesla-t4": (1, 2, 4), "nvidia-tesla-v100": (1, 2, 4, 8), "nvidia-tesla-p4": (1, 2, 4),
    "nvidia-tesla-p100": (1, 2, 4),
}
# Predefined machine types: GiB of memory per vCPU by (series, class)
# (https://cloud.google.com/compute/docs/general-purpose-machines,
# https://cloud.google.com/compute/docs/compute-optimized-machines).
_GIB_PER_VCPU: Mapping[tuple[str, str], float] = {
    ("n1", "standard"): 3.75, ("n1", "highmem"): 6.5, ("n1", "highcpu"): 0.9,
    **{(s, "standard"): 4.0 for s in ("n2", "n2d", "e2", "c2", "c2d", "c3", "c3d", "n4", "c4")},
    **{(s, "highmem"): 8.0 for s in ("n2", "n2d", "e2", "c2d", "c3", "c3d", "n4", "c4")},
    **{(s, "highcpu"): 1.0 for s in ("n2", "n2d", "e2", "c2d", "c3", "c3d", "n4", "c4")},
}
_PREDEFINED = re.compile(r"^([a-z][a-z0-9]*)-(standard|highmem|highcpu)-(\d+)$")


class BatchConfigError(ValueError):
    """The dispatch function's Batch settings cannot make a valid job (a deployment error)."""


@dataclass(frozen=True)
class Shape:
    vcpus: int
    memory_gib: float
    gpu_type: str | None = None  # what an accelerator-optimized type carries
    gpu_count: int = 0


def machine_shape(machine_type: str) -> Shape:
    """vCPUs and memory (and built-in GPUs) of a predefined Compute Engine machine type."""
    if machine_type in _GPU_MACHINES:
        vcpus, mem, gpu, count = _GPU_MACHINES[machine_type]
        return Shape(vcpus, mem, gpu, count)
    m = _PREDEFINED.match(machine_type)
    if m is None or (m.group(1), m.group(2)) not in _GIB_PER_VCPU:
        raise BatchConfigError(f"unknown machine type {machine_type!r}: use a predefined type "
                               f"(e.g. c2-standard-8, g2-standard-8)")
    vcpus = int(m.group(3))
    return Shape(vcpus, _GIB_PER_VCPU[(m.group(1), m.group(2))] * vcpus)


def check_gpus(machine_type: str, gpu_type: str, gpu_count: int) -> None:
    """The GPUs asked for must be the ones the machine type can carry (g2-standard-8: one L4)."""
    shape = machine_shape(machine_type)
    if shape.gpu_type is not None:
        if gpu_type != shape.gpu_type or gpu_count != shape.gpu_count:
            raise BatchConfigError(f"{machine_type} carries exactly {shape.gpu_count} {shape.gpu_type}, "
                                   f"not {gpu_count} {gpu_type} (GPU_TYPE / GPU_COUNT)")
        return
    if machine_type.startswith("n1-") and gpu_count in _N1_GPU_COUNTS.get(gpu_type, ()):
        return
    raise BatchConfigError(f"{machine_type} cannot carry {gpu_count} {gpu_type}: use an accelerator-optimized "
                           f"type (g2-standard-8 for one nvidia-l4) or an n1 type with a supported count")


@dataclass(frozen=True)
class BatchSettings:
    """What the Batch jobs run on: the dispatch function's environment (docs/configuration.md)."""

    project: str
    region: str
    job_image: str
    data_bucket: str
    depth_model: str = stages.DEFAULT_DEPTH_MODEL
    cpu_machine_type: str = "n2-standard-8"  # the defaults are terraform/variables.tf's (tests/terraform)
    gpu_machine_type: str = "g2-standard-8"
    gpu_type: str = "nvidia-l4"
    gpu_count: int = 1
    provisioning_model: str = "STANDARD"
    service_account: str = ""
    network: str = ""
    subnetwork: str = ""
    gpu_driver_version: str = ""  # "": the driver Batch's installer picks

    def __post_init__(self) -> None:
        if self.provisioning_model not in PROVISIONING_MODELS:
            raise BatchConfigError(f"PROVISIONING_MODEL must be one of {', '.join(PROVISIONING_MODELS)}, "
                                   f"got {self.provisioning_model!r}")
        machine_shape(self.cpu_machine_type)
        check_gpus(self.gpu_machine_type, self.gpu_type, self.gpu_count)

    @classmethod
    def from_env(cls, settings: Settings) -> BatchSettings:
        env = os.environ
        raw_count = env.get("GPU_COUNT", "").strip() or "1"
        if not raw_count.isdigit():
            raise BatchConfigError(f"GPU_COUNT must be a whole number, got {raw_count!r}")
        return cls(
            project=settings.project, region=settings.region, job_image=settings.job_image,
            data_bucket=settings.data_bucket, depth_model=settings.depth_model,
            cpu_machine_type=env.get("CPU_MACHINE_TYPE", "").strip() or cls.cpu_machine_type,
            gpu_machine_type=env.get("GPU_MACHINE_TYPE", "").strip() or cls.gpu_machine_type,
            gpu_type=env.get("GPU_TYPE", "").strip() or cls.gpu_type,
            gpu_count=int(raw_count),
            provisioning_model=env.get("PROVISIONING_MODEL", "").strip() or cls.provisioning_model,
            service_account=env.get("BATCH_SERVICE_ACCOUNT", "").strip(),
            network=env.get("BATCH_NETWORK", "").strip(),
            subnetwork=env.get("BATCH_SUBNETWORK", "").strip(),
            gpu_driver_version=env.get("GPU_DRIVER_VERSION", "").strip(),
        )

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"


def label_value(text: str) -> str:
    """A Batch/Compute label value: lowercase letters, digits, `-` and `_`, at most 63
    (https://cloud.google.com/compute/docs/labeling-resources#requirements)."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def job_id_prefix(stage: str, request_id: str) -> str:
    """The start of the stage's job ids; the workflow appends `-{milliseconds}` for each attempt
    (ids are unique per project and region: a lowercase letter, then lowercase letters, digits and
    `-`, at most 63 characters: https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs/create)."""
    return f"sp-{stage}-" + re.sub(r"[^a-z0-9-]", "-", request_id.lower())[:36]


def batch_priority(priority: int) -> int:
    """The Batch Job priority of a request's queue priority (PRIORITY_MIN runs first)."""
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority {priority} is outside {PRIORITY_MIN}..{PRIORITY_MAX}")
    return BATCH_PRIORITY_TOP - _PRIORITY_STEP * (priority - PRIORITY_MIN)


def job_body(stage: str, request_id: str, workspace: str, options: Mapping[str, Any], priority: int,
             bs: BatchSettings) -> dict[str, Any]:
    """The Batch v1 Job JSON that runs `stage` for one request."""
    st = stages.stage(stage)
    if not bs.job_image:
        raise BatchConfigError("JOB_IMAGE is not set")
    spot = options.get("spot")
    provisioning = "SPOT" if spot is True else "STANDARD" if spot is False else bs.provisioning_model
    machine_type = bs.gpu_machine_type if st.gpu else bs.cpu_machine_type
    shape = machine_shape(machine_type)
    labels = {"app": "splatpipe", "stage": stage, "request_id": label_value(request_id)}
    policy: dict[str, Any] = {"machineType": machine_type, "provisioningModel": provisioning,
                              "bootDisk": {"sizeGb": BOOT_DISK_GB}}
    if st.gpu:
        policy["accelerators"] = [{"type": bs.gpu_type, "count": bs.gpu_count}]
        if bs.gpu_driver_version:
            policy["accelerators"][0]["driverVersion"] = bs.gpu_driver_version
        policy["bootDisk"]["image"] = GPU_BOOT_IMAGE
    allocation: dict[str, Any] = {"instances": [{"policy": policy, "installGpuDrivers": st.gpu}],
                                  "labels": labels}
    if bs.service_account:
        allocation["serviceAccount"] = {"email": bs.service_account}
    if bs.network:
        interface: dict[str, Any] = {"network": bs.network, "noExternalIpAddress": True}
        if bs.subnetwork:
            interface["subnetwork"] = bs.subnetwork
        allocation["network"] = {"networkInterfaces": [interface]}
    env = {
        "DEPTH_MODEL": bs.depth_model,
        "GOOGLE_CLOUD_PROJECT": bs.project,
        "REGION": bs.region,
        "DATA_BUCKET": bs.data_bucket,
        "SPLATPIPE_STAGE": stage,
        GPUS_ENV: str(bs.gpu_count if st.gpu else 0),
        "PYTHONUNBUFFERED": "1",
    }
    runnable = {
        "container": {"imageUri": bs.job_image,
                      "commands": ["run", stage, "--workspace", workspace, "--request-id", request_id]},
        "environment": {"variables": env},
    }
    task_spec = {
        "runnables": [runnable],
        "computeResource": {"cpuMilli": shape.vcpus * 1000,
                            "memoryMib": int(shape.memory_gib * 1024 * MEMORY_FRACTION)},
        "maxRetryCount": st.max_retries,
        "maxRunDuration": f"{st.max_run_seconds}s",
        "lifecyclePolicies": [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": list(NO_RETRY_EXIT_CODES)}}],
    }
    return {
        "priority": batch_priority(priority),
        "taskGroups": [{"taskCount": 1, "parallelism": 1, "taskSpec": task_spec}],
        "allocationPolicy": allocation,
        "labels": labels,
        "logsPolicy": {"destination": "CLOUD_LOGGING"},
    }


# How long the workflow waits for one job: every attempt's time limit, plus time in the queue
# for a VM (Spot capacity can take a while).
QUEUE_WAIT_SECONDS = 6 * 3600


def stage_jobs(stage_names: list[str] | tuple[str, ...], request_id: str, workspace: str,
               options: Mapping[str, Any], priority: int, bs: BatchSettings) -> dict[str, Any]:
    """The workflow's part of the execution argument: which stages run, their jobs and what it
    reports for each (`stages`, `disabled`, `jobs`, `batch_parent`)."""
    run = [s for s in stage_names if stages.enabled(s, options)]
    jobs = {}
    for s in run:
        st = stages.stage(s)
        jobs[s] = {
            "job": job_body(s, request_id, workspace, options, priority, bs),
            "job_id_prefix": job_id_prefix(s, request_id),
            "outputs": dict(st.outputs),
            "best_effort": st.best_effort,
            "wait_seconds": st.max_run_seconds * (st.max_retries + 1) + QUEUE_WAIT_SECONDS,
        }
    return {"stages": run, "disabled": [s for s in stage_names if s not in run], "jobs": jobs,
            "batch_parent": bs.parent}
