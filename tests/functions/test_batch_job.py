"""Batch Job bodies: every stage x preset x priority x Spot choice loads into the Batch v1 proto
(unknown fields raise), GPU stages get their GPU where the container can see it."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from google.cloud import batch_v1
from google.protobuf.json_format import ParseDict

from core import stages
from core.options import PRESETS, normalize_options
from core.record import PRIORITY_MAX, PRIORITY_MIN
from emulator.workflows.executions import MAX_ARGUMENT_BYTES
from functions.config import Settings
from functions.dispatch import batch_job
from functions.dispatch.batch_job import BatchConfigError, BatchSettings

BS = BatchSettings(project="proj", region="europe-west4", job_image="europe-docker.pkg.dev/p/r/job:1",
                   data_bucket="data", service_account="batch@proj.iam.gserviceaccount.com",
                   network="projects/proj/global/networks/vpc",
                   subnetwork="projects/proj/regions/europe-west4/subnetworks/batch")


def _proto(body: dict[str, Any]) -> batch_v1.Job:
    job = batch_v1.Job()
    ParseDict(body, job._pb)  # ignore_unknown_fields=False: a misspelt field raises
    return job


@pytest.mark.parametrize(("name", "preset", "priority", "spot"), list(itertools.product(
    stages.ORDER, PRESETS, (0, 5, 9), (None, True, False))))
def test_every_body_loads_into_the_batch_v1_job(name: str, preset: str, priority: int, spot: bool | None) -> None:
    options = normalize_options({"preset": preset, **({} if spot is None else {"spot": spot})})
    body = batch_job.job_body(name, "Req_1", "gs://data/jobs/Req_1", options, priority, BS)
    job = _proto(body)
    st = stages.stage(name)
    assert job.priority == batch_job.batch_priority(priority)
    (group,) = job.task_groups
    spec = group.task_spec
    assert group.task_count == 1 and spec.max_retry_count == st.max_retries
    assert spec.max_run_duration.seconds == st.max_run_seconds
    assert spec.compute_resource.cpu_milli == 8000  # n2-standard-8 / g2-standard-8: 8 vCPUs, 32 GiB
    assert 0.8 * 32 * 1024 < spec.compute_resource.memory_mib < 32 * 1024
    (runnable,) = spec.runnables
    assert list(runnable.container.commands) == ["run", name, "--workspace", "gs://data/jobs/Req_1",
                                                 "--request-id", "Req_1"]
    env = dict(runnable.environment.variables)
    assert env["SPLATPIPE_STAGE"] == name and env["GOOGLE_CLOUD_PROJECT"] == "proj"
    assert env[batch_job.GPUS_ENV] == ("1" if st.gpu else "0")
    (instance,) = job.allocation_policy.instances
    policy = instance.policy
    want = {True: batch_v1.AllocationPolicy.ProvisioningModel.SPOT,
            False: batch_v1.AllocationPolicy.ProvisioningModel.STANDARD,
            None: batch_v1.AllocationPolicy.ProvisioningModel.STANDARD}[spot]
    assert policy.provisioning_model == want
    assert instance.install_gpu_drivers is st.gpu
    if st.gpu:
        assert policy.machine_type == "g2-standard-8"
        assert [(a.type_, a.count) for a in policy.accelerators] == [("nvidia-l4", 1)]
        assert policy.boot_disk.image == "batch-debian"  # the driver is visible in the container
    else:
        assert policy.machine_type == "n2-standard-8" and not policy.accelerators
        assert policy.boot_disk.image == ""  # the default image is enough without a GPU
    assert job.allocation_policy.service_account.email == BS.service_account
    (nic,) = job.allocation_policy.network.network_interfaces
    assert nic.no_external_ip_address and nic.subnetwork == BS.subnetwork
    assert dict(job.labels) == {"app": "splatpipe", "stage": name, "request_id": "req_1"}
    (no_retry,) = spec.lifecycle_policies
    assert no_retry.action == batch_v1.LifecyclePolicy.Action.FAIL_TASK
    # bad input, and a task past its time limit: a rerun cannot help, so no GPU hours on one
    assert list(no_retry.action_condition.exit_codes) == [3, 50005]


def test_queue_priorities_map_onto_the_batch_range_in_order() -> None:
    # Job.priority is in [0, 100), higher first; the queue's PRIORITY_MIN runs first.
    got = [batch_job.batch_priority(p) for p in range(PRIORITY_MIN, PRIORITY_MAX + 1)]
    assert got == sorted(got, reverse=True) and len(set(got)) == len(got)
    assert got[0] == 99 and 0 <= got[-1] < 100
    with pytest.raises(ValueError):
        batch_job.batch_priority(PRIORITY_MAX + 1)


def test_the_largest_execution_argument_fits_workflows_limit() -> None:
    # Every stage's job body travels in the execution argument, which Workflows caps
    # (https://cloud.google.com/workflows/quotas; the local engine's MAX_ARGUMENT_BYTES).
    long = "x" * 63
    bs = BatchSettings(project=long[:30], region="northamerica-northeast1", job_image="europe-docker.pkg.dev/"
                       + long + "/" + long + "/job@sha256:" + "f" * 64, data_bucket=long,
                       service_account=long[:30] + "@" + long[:30] + ".iam.gserviceaccount.com",
                       network="projects/" + long[:30] + "/global/networks/" + long,
                       subnetwork="projects/" + long[:30] + "/regions/northamerica-northeast1/subnetworks/" + long)
    request_id = "r" * 36
    workspace = f"gs://{long}/jobs/{request_id}"
    arg = {"request_id": request_id, "workspace": workspace, "input": f"gs://{long}/sessions/{long}/",
           "options": normalize_options({"preset": "high"}), "priority": PRIORITY_MAX,
           "webhook_url": "https://" + "w" * 2000, **batch_job.stage_jobs(list(stages.ORDER), request_id, workspace,
                                                                         normalize_options({"preset": "high"}),
                                                                         PRIORITY_MAX, bs)}
    assert len(json.dumps(arg).encode()) < MAX_ARGUMENT_BYTES


def test_a_field_batch_does_not_know_is_refused() -> None:
    body = batch_job.job_body("splat", "r", "gs://d/jobs/r", {"preset": "standard"}, 5, BS)
    body["taskGroups"][0]["taskSpec"]["maxRunDurationSeconds"] = 10
    with pytest.raises(Exception, match="maxRunDurationSeconds"):
        _proto(body)


def test_gpu_count_must_match_the_machine_type() -> None:
    base = {"project": "p", "region": "r", "job_image": "i", "data_bucket": "d"}
    BatchSettings(**base, gpu_machine_type="g2-standard-8", gpu_type="nvidia-l4", gpu_count=1)
    BatchSettings(**base, gpu_machine_type="g2-standard-24", gpu_type="nvidia-l4", gpu_count=2)
    BatchSettings(**base, gpu_machine_type="n1-standard-8", gpu_type="nvidia-tesla-t4", gpu_count=2)
    for machine, gpu, count in [("g2-standard-8", "nvidia-l4", 2), ("g2-standard-8", "nvidia-l4", 8),
                                ("g2-standard-8", "nvidia-tesla-t4", 1), ("n1-standard-8", "nvidia-tesla-t4", 3),
                                ("c2-standard-8", "nvidia-l4", 1)]:
        with pytest.raises(BatchConfigError):
            BatchSettings(**base, gpu_machine_type=machine, gpu_type=gpu, gpu_count=count)
    with pytest.raises(BatchConfigError, match="unknown machine type"):
        BatchSettings(**base, cpu_machine_type="local")
    with pytest.raises(BatchConfigError, match="PROVISIONING_MODEL"):
        BatchSettings(**base, provisioning_model="CHEAP")


def test_compute_resource_follows_the_machine_type() -> None:
    assert batch_job.machine_shape("n1-standard-8") == batch_job.Shape(8, 30.0)
    assert batch_job.machine_shape("c2-standard-16") == batch_job.Shape(16, 64.0)
    assert batch_job.machine_shape("g2-standard-12") == batch_job.Shape(12, 48, "nvidia-l4", 1)
    bs = BatchSettings(project="p", region="r", job_image="i", data_bucket="d", cpu_machine_type="n2-highmem-4")
    spec = batch_job.job_body("sfm", "r", "gs://d/jobs/r", {}, 5, bs)["taskGroups"][0]["taskSpec"]
    assert spec["computeResource"] == {"cpuMilli": 4000, "memoryMib": int(32 * 1024 * 0.9)}


def test_settings_from_the_dispatch_functions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"GPU_MACHINE_TYPE": "n1-standard-8", "GPU_TYPE": "nvidia-tesla-t4", "GPU_COUNT": "2",
                 "PROVISIONING_MODEL": "SPOT", "BATCH_SERVICE_ACCOUNT": "sa@p.iam.gserviceaccount.com",
                 "CPU_MACHINE_TYPE": "", "BATCH_NETWORK": "", "BATCH_SUBNETWORK": ""}.items():
        monkeypatch.setenv(k, v)
    bs = BatchSettings.from_env(Settings(project="p", region="europe-west4", job_image="img", data_bucket="d"))
    assert (bs.gpu_machine_type, bs.gpu_type, bs.gpu_count, bs.provisioning_model) == (
        "n1-standard-8", "nvidia-tesla-t4", 2, "SPOT")
    assert bs.cpu_machine_type == "n2-standard-8" and bs.parent == "projects/p/locations/europe-west4"
    body = batch_job.job_body("depth", "r", "gs://d/jobs/r", {"preset": "preview"}, 5, bs)
    assert "network" not in body["allocationPolicy"]
    assert body["allocationPolicy"]["instances"][0]["policy"]["provisioningModel"] == "SPOT"
    monkeypatch.setenv("GPU_COUNT", "two")
    with pytest.raises(BatchConfigError, match="GPU_COUNT"):
        BatchSettings.from_env(Settings())


def test_disabled_stages_get_no_job() -> None:
    options = normalize_options({"preset": "preview", "depth": False, "mesh": False})
    arg = batch_job.stage_jobs(list(stages.ORDER), "r", "gs://d/jobs/r", options, 5, BS)
    assert arg["stages"] == ["frames", "sfm", "splat"] and arg["disabled"] == ["depth", "mesh"]
    assert list(arg["jobs"]) == ["frames", "sfm", "splat"]
    splat = arg["jobs"]["splat"]
    assert splat["outputs"] == dict(stages.stage("splat").outputs) and splat["best_effort"] is False
    assert splat["job_id_prefix"] == "sp-splat-r"
    assert splat["wait_seconds"] > stages.stage("splat").max_run_seconds * 3
    full = batch_job.stage_jobs(list(stages.ORDER), "r", "gs://d/jobs/r", normalize_options({}), 5, BS)
    assert full["jobs"]["mesh"]["best_effort"] is True and full["disabled"] == []


def test_job_ids_fit_the_api() -> None:
    prefix = batch_job.job_id_prefix("splat", "A_Very_Long_Request_Id_" + "x" * 80)
    assert len(prefix + "-1780000000000") <= 63 and prefix == prefix.lower()


def test_a_pinned_gpu_driver_reaches_the_gpu_stages_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    pinned = replace(BS, gpu_driver_version="570.172.08")
    options = normalize_options({"preset": "preview"})
    for name in stages.ORDER:
        job = _proto(batch_job.job_body(name, "Req_1", "gs://data/jobs/Req_1", options, 5, pinned))
        accelerators = list(job.allocation_policy.instances[0].policy.accelerators)
        if stages.stage(name).gpu:
            assert [a.driver_version for a in accelerators] == ["570.172.08"]
        else:
            assert accelerators == []
    # Unpinned: no driverVersion, Batch's installer picks.
    job = _proto(batch_job.job_body("splat", "Req_1", "gs://data/jobs/Req_1", options, 5, BS))
    assert job.allocation_policy.instances[0].policy.accelerators[0].driver_version == ""
    monkeypatch.setenv("GPU_DRIVER_VERSION", " 570.172.08 ")
    assert BatchSettings.from_env(Settings(job_image="x")).gpu_driver_version == "570.172.08"
