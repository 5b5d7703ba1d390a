"""core.pricing: a request's estimated cost is the sum of its stages', each its run time at its
machine's hourly price from the one price table (issue 20)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from core import pricing
from core.pricing import PRICES, Machine
from core.record import STAGE_MACHINE_KEY, Record, nested

T0 = 1_700_000_000_000  # ms
CPU_SPOT = Machine("n2-standard-8", "SPOT")
GPU_SPOT = Machine("g2-standard-8", "SPOT", "nvidia-l4", 1)
GPU_STANDARD = dataclasses.replace(GPU_SPOT, provisioning_model="STANDARD")


def stage(seconds: float | None, machine: Machine | None, state: str = "SUCCEEDED") -> dict[str, Any]:
    """A stage of the record as the queue's update script leaves it (times in ms)."""
    st: dict[str, Any] = {"state": state, "started_at": T0}
    if seconds is not None:
        st["finished_at"] = T0 + int(seconds * 1000)
    if machine is not None:
        st[STAGE_MACHINE_KEY] = machine.as_json()
    return st


def priced_record(stages: dict[str, dict[str, Any]], state: str = "COMPLETED") -> Record:
    """A record whose stages ran on the given machines, built from its Redis hash."""
    doc = {"session_id": "s1", "input": "gs://up/s1/v.mp4", "options": {"preset": "standard"},
           "stages_requested": list(stages), "token_sha256": "ab" * 32, "source": "api", "webhook_url": None}
    return Record.from_redis({"request_id": "r1", "state": state, "priority": "5", "created_at": str(T0),
                              "updated_at": str(T0), "doc": json.dumps(doc), "stages": json.dumps(stages)})


def typical() -> Record:
    """frames and sfm on Spot CPU machines, depth and splat on Spot L4s, mesh switched off."""
    return priced_record({"frames": stage(120, CPU_SPOT), "sfm": stage(600, CPU_SPOT), "depth": stage(300, GPU_SPOT),
                          "splat": stage(3600, GPU_SPOT), "mesh": stage(0, None, "SKIPPED")})


def test_the_cost_of_a_request_is_the_sum_of_its_stages_from_the_table() -> None:
    rec = typical()
    cpu = PRICES.machines["n2-standard-8"].spot
    gpu = PRICES.machines["g2-standard-8"].spot + PRICES.accelerators["nvidia-l4"].spot
    expected = {"frames": 120 / 3600 * cpu, "sfm": 600 / 3600 * cpu, "depth": 300 / 3600 * gpu, "splat": 1.0 * gpu}
    assert {s: pricing.stage_cost(rec, s) for s in expected} == pytest.approx(expected)
    assert pricing.stage_cost(rec, "mesh") is None  # switched off: no job, nothing to pay
    assert pricing.request_cost(rec) == pytest.approx(sum(expected.values()))
    summary = pricing.summary(rec)
    assert summary["estimated_usd"] == pytest.approx(sum(expected.values()), abs=1e-6)
    assert summary["estimated_usd"] == pytest.approx(sum(s["usd"] for s in summary["stages"].values()), abs=1e-5)
    assert set(summary["stages"]) == set(expected)
    assert summary["prices"] == {"currency": "USD", "region": "us-central1", "source": PRICES.source,
                                 "as_of": PRICES.as_of}


def test_a_stage_on_a_spot_gpu_machine_is_priced_at_the_spot_rate() -> None:
    spot = priced_record({"splat": stage(1800, GPU_SPOT)})
    standard = priced_record({"splat": stage(1800, GPU_STANDARD)})
    g2, l4 = PRICES.machines["g2-standard-8"], PRICES.accelerators["nvidia-l4"]
    assert pricing.stage_cost(spot, "splat") == pytest.approx(0.5 * (g2.spot + l4.spot))
    assert pricing.stage_cost(standard, "splat") == pytest.approx(0.5 * (g2.standard + l4.standard))
    assert g2.spot < g2.standard and l4.spot < l4.standard
    entry = pricing.summary(spot)["stages"]["splat"]
    assert entry["usd_per_hour"] == pytest.approx(g2.spot + l4.spot)
    assert (entry["provisioning_model"], entry["accelerator"], entry["accelerator_count"]) == ("SPOT", "nvidia-l4", 1)


def test_a_short_stage_is_billed_a_minute_and_a_running_one_is_not_priced_yet() -> None:
    rec = priced_record({"frames": stage(5, CPU_SPOT), "sfm": stage(None, CPU_SPOT, "RUNNING")})
    assert pricing.stage_cost(rec, "frames") == pytest.approx(60 / 3600 * PRICES.machines["n2-standard-8"].spot)
    assert pricing.stage_cost(rec, "sfm") is None
    assert pricing.summary(rec)["stages"]["sfm"]["usd"] is None
    assert pricing.request_cost(rec) == pytest.approx(pricing.stage_cost(rec, "frames"))


def test_a_machine_the_table_lacks_is_not_priced() -> None:
    rec = priced_record({"splat": stage(600, Machine("a2-highgpu-1g", "SPOT", "nvidia-tesla-a100", 1)),
                         "frames": stage(600, Machine("n2-standard-8", "STANDARD", None, 0))})
    assert pricing.stage_cost(rec, "splat") is None
    assert pricing.summary(rec)["stages"]["splat"]["usd_per_hour"] is None
    assert pricing.request_cost(rec) == pytest.approx(600 / 3600 * PRICES.machines["n2-standard-8"].standard)


def test_the_price_table_setting_replaces_entries_and_keeps_the_rest() -> None:
    table = pricing.parse_table(json.dumps({"machines": {"a2-highgpu-1g": {"STANDARD": 3.0, "SPOT": 1.0}},
                                            "accelerators": {"nvidia-l4": {"STANDARD": 0.5, "SPOT": 0.25}},
                                            "source": "billing export", "as_of": "2027-01-01"}))
    assert table.machines["n2-standard-8"] == PRICES.machines["n2-standard-8"]
    assert table.hourly(GPU_SPOT) == pytest.approx(PRICES.machines["g2-standard-8"].spot + 0.25)
    assert table.hourly(Machine("a2-highgpu-1g", "SPOT")) == 1.0
    assert table.describe()["source"] == "billing export" and table.region == PRICES.region
    assert pricing.stage_cost(typical(), "splat", table) == pytest.approx(PRICES.machines["g2-standard-8"].spot + 0.25)
    assert pricing.parse_table("") is PRICES and pricing.parse_table("  ") is PRICES
    for bad in ("[", "[]", '{"machines": {"x": {"STANDARD": 1}}}', '{"machines": {"x": {"STANDARD": -1, "SPOT": 1}}}',
                '{"accelerators": {"x": {"STANDARD": "1", "SPOT": 1}}}', '{"as_of": 7}', '{"cpus": {}}'):
        with pytest.raises(ValueError, match="PRICE_TABLE"):
            pricing.parse_table(bad)


@pytest.mark.parametrize("raw", [
    None, [], {}, {"machine_type": "", "provisioning_model": "SPOT"},
    {"machine_type": "n2-standard-8", "provisioning_model": "PREEMPTIBLE"},
    {"machine_type": "g2-standard-8", "provisioning_model": "SPOT", "accelerator": "nvidia-l4", "accelerator_count": 0},
    {"machine_type": "g2-standard-8", "provisioning_model": "SPOT", "accelerator_count": 1},
    {"machine_type": "g2-standard-8", "provisioning_model": "SPOT", "accelerator": "nvidia-l4", "accelerator_count": True},
    {"machine_type": "n2-standard-8", "provisioning_model": "SPOT", "zone": "us-central1-a"},
])
def test_a_malformed_machine_is_refused(raw: Any) -> None:
    with pytest.raises(ValueError, match="machine"):
        Machine.from_json(raw)


def test_a_machine_round_trips_through_its_json() -> None:
    for m in (CPU_SPOT, GPU_SPOT, GPU_STANDARD):
        assert Machine.from_json(json.loads(json.dumps(m.as_json()))) == m


def test_the_machine_is_the_one_the_batch_jobs_instance_policy_asks_for() -> None:
    gpu = {"machineType": "g2-standard-8", "provisioningModel": "SPOT", "bootDisk": {"sizeGb": 100},
           "accelerators": [{"type": "nvidia-l4", "count": 1}]}
    assert Machine.from_policy(gpu) == GPU_SPOT
    assert Machine.from_policy({**gpu, "accelerators": [{"type": "nvidia-l4", "count": "1"}]}) == GPU_SPOT
    assert Machine.from_policy({"machineType": "n2-standard-8"}) == Machine("n2-standard-8", "STANDARD")
    for bad in (None, "g2-standard-8", {"provisioningModel": "SPOT"}, {**gpu, "accelerators": {"type": "x"}},
                {**gpu, "accelerators": [{"type": "nvidia-l4", "count": 1}] * 2},
                {**gpu, "provisioningModel": "PREEMPTIBLE"}):
        with pytest.raises(ValueError, match="machine"):
            Machine.from_policy(bad)


def test_the_configured_table_is_the_price_table_variable_over_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRICE_TABLE", raising=False)
    assert pricing.configured() is PRICES and pricing.configured_summary(typical()) == pricing.summary(typical())
    monkeypatch.setenv("PRICE_TABLE", '{"machines": {"n2-standard-8": {"STANDARD": 0.5, "SPOT": 0.2}}}')
    assert pricing.configured().hourly(CPU_SPOT) == 0.2
    # A malformed table costs the status and the webhook their `cost`, not their answer.
    monkeypatch.setenv("PRICE_TABLE", '{"machines": []}')
    assert pricing.configured_summary(typical()) is None


def test_an_archived_record_keeps_its_machines_and_so_its_cost() -> None:
    """Firestore answers for a record Redis no longer keeps (core.record.Record.from_firestore)."""
    rec = typical()
    archived = Record.from_firestore(rec.request_id, nested(rec.firestore_fields()), rec.version)
    assert archived.stages["splat"][STAGE_MACHINE_KEY] == GPU_SPOT.as_json()
    assert pricing.summary(archived) == pricing.summary(rec)


# --- through the functions: the workflow's updates record the machine, the status and the webhook
# show the cost ---------------------------------------------------------------------------------

GPU_POLICY = {"machineType": "g2-standard-8", "provisioningModel": "SPOT", "bootDisk": {"sizeGb": 100},
              "accelerators": [{"type": "nvidia-l4", "count": 1}]}


def test_the_status_and_the_webhook_show_the_cost_of_a_spot_gpu_stage(fn_apps: Any, fn_env: dict,
                                                                      buckets: Any) -> None:
    from fn_testlib import RecordingServer, post_json, put_json, trigger_body

    with RecordingServer(lambda m, p, b: (200, {"ok": True})) as srv:
        made = post_json(fn_apps.api, "/trigger-reconstruction",
                         trigger_body(buckets, webhook_url=f"http://{srv.host}/hook")).get_json()
        rid, token = made["request_id"], made["callback_token"]
        assert fn_apps.queue.get("/next").get_json()["request_id"] == rid
        # The workflow's RUNNING update carries the job's InstancePolicy (workflows/reconstruct.yaml).
        resp = put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING",
                                                           "batch_job": "jobs/s-1", "machine": GPU_POLICY})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        running = fn_apps.api.get(f"/status?callback_token={token}").get_json()["cost"]
        assert running["stages"]["splat"]["usd"] is None and running["estimated_usd"] == 0.0
        put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "SUCCEEDED", "batch_job": "jobs/s-1"})
        cost = fn_apps.api.get(f"/status?callback_token={token}").get_json()["cost"]
        spot = PRICES.machines["g2-standard-8"].spot + PRICES.accelerators["nvidia-l4"].spot
        entry = cost["stages"]["splat"]
        assert entry["usd_per_hour"] == pytest.approx(spot) and entry["run_seconds"] < 60
        assert entry["usd"] == pytest.approx(spot / 60, abs=1e-6)  # a billed minute at the Spot rate
        assert {k: entry[k] for k in ("machine_type", "provisioning_model", "accelerator", "accelerator_count")} == {
            "machine_type": "g2-standard-8", "provisioning_model": "SPOT", "accelerator": "nvidia-l4",
            "accelerator_count": 1}
        assert cost["estimated_usd"] == entry["usd"] and set(cost["stages"]) == {"splat"}
        assert fn_apps.queue.get(f"/status/{rid}").get_json()["cost"] == cost
        body = {"request_id": rid, "state": "COMPLETED", "outputs": {}, "error": None, "warnings": []}
        assert post_json(fn_apps.queue, f"/webhook/{rid}", body).status_code == 200
        ((_, _, sent, _),) = srv.requests
        assert json.loads(sent) == {**body, "cost": cost}


def test_a_malformed_machine_update_is_refused(fn_apps: Any, fn_env: dict, buckets: Any) -> None:
    from fn_testlib import assert_error, post_json, put_json, trigger_body

    rid = post_json(fn_apps.api, "/trigger-reconstruction", trigger_body(buckets)).get_json()["request_id"]
    assert_error(put_json(fn_apps.queue, f"/status/{rid}", {"machine": GPU_POLICY}), 422, "invalid_machine")
    assert_error(put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "machine": {"machineType": 8}}),
                 422, "invalid_machine")


def test_the_table_prices_the_machines_dispatch_asks_for_by_default() -> None:
    """What the workflow sends is the job body's InstancePolicy: at the defaults (BatchSettings,
    terraform/variables.tf) a GPU stage on Spot is a g2-standard-8 with one L4, and the table has
    both machines at both rates."""
    from functions.dispatch import batch_job

    bs = batch_job.BatchSettings(project="p", region="us-central1", job_image="img", data_bucket="d")
    for stage, options, expected in (("splat", {"spot": True}, GPU_SPOT), ("depth", {}, GPU_STANDARD),
                                     ("sfm", {"spot": True}, CPU_SPOT)):
        body = batch_job.job_body(stage, "r1", "gs://d/jobs/r1", options, 5, bs)
        machine = Machine.from_policy(body["allocationPolicy"]["instances"][0]["policy"])
        assert machine == expected and PRICES.hourly(machine) is not None
        assert PRICES.hourly(dataclasses.replace(machine, provisioning_model="STANDARD")) is not None
