"""The estimated cost of a request: each stage's Batch VM time, priced from one table.

What a stage ran on is its `Machine` (machine type, GPUs, provisioning model): the workflow sends
the InstancePolicy of the stage's Batch job (the body dispatch built, functions.dispatch.batch_job)
with the stage's RUNNING update, and the queue keeps the machine it names in the record as
`stages.{s}.machine` (core.record.STAGE_MACHINE_KEY; mirrored to Firestore with the stage). How
long it ran is the stage's `started_at` to `finished_at` in the record, both stamped by the queue:
from just before its first Batch job is created to the update after its last one ended, so it
counts the wait for a VM and up to a minute of polling as well; the estimate errs high. Google bills vCPUs, memory and GPUs per second with a minimum of
one minute (https://cloud.google.com/compute/vm-instance-pricing, "Billing model"), hence
BILLING_MINIMUM_SECONDS. Boot disks and storage are not counted.

PRICES is the one price table (docs/contracts.md "Cost"); a deployment replaces entries of it
with the PRICE_TABLE variable (JSON, `parse_table`; `configured()` reads it), which Terraform sets
on every function from `var.price_table`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.record import STAGE_MACHINE_KEY, Record

PROVISIONING_MODELS = ("STANDARD", "SPOT")
"""Batch's provisioning models (AllocationPolicy.ProvisioningModel) that a table prices."""

BILLING_MINIMUM_SECONDS = 60.0
CURRENCY = "USD"


@dataclass(frozen=True)
class Machine:
    """What one stage's Batch job ran on (the record's `stages.{s}.machine`)."""

    machine_type: str
    provisioning_model: str  # one of PROVISIONING_MODELS
    accelerator: str | None = None  # the GPU type, None on a CPU machine
    accelerator_count: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"machine_type": self.machine_type, "provisioning_model": self.provisioning_model,
                "accelerator": self.accelerator, "accelerator_count": self.accelerator_count}

    @classmethod
    def from_json(cls, value: Any) -> Machine:
        """The machine of its JSON (as_json's shape); ValueError names what is wrong."""
        keys = ("machine_type", "provisioning_model", "accelerator", "accelerator_count")
        if not isinstance(value, Mapping) or set(value) - set(keys) or "machine_type" not in value:
            raise ValueError(f"machine must be an object with {', '.join(keys)}")
        mtype, model = value.get("machine_type"), value.get("provisioning_model")
        acc, count = value.get("accelerator"), value.get("accelerator_count", 0)
        if not isinstance(mtype, str) or not 0 < len(mtype) <= 64:
            raise ValueError("machine.machine_type must be a machine type name")
        if model not in PROVISIONING_MODELS:
            raise ValueError(f"machine.provisioning_model must be one of {', '.join(PROVISIONING_MODELS)}")
        if acc is not None and (not isinstance(acc, str) or not 0 < len(acc) <= 64):
            raise ValueError("machine.accelerator must be a GPU type name or null")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 16 or (count > 0) != bool(acc):
            raise ValueError("machine.accelerator_count must be 0 without an accelerator, 1-16 with one")
        return cls(mtype, str(model), acc, count)

    @classmethod
    def from_policy(cls, policy: Any) -> Machine:
        """The machine a Batch job's InstancePolicy asks for (`allocationPolicy.instances[].policy`:
        `machineType`, `provisioningModel`, STANDARD when absent, and `accelerators` [{type, count}],
        https://cloud.google.com/batch/docs/reference/rest/v1/projects.locations.jobs#InstancePolicy);
        ValueError names what is wrong."""
        if not isinstance(policy, Mapping):
            raise ValueError("machine must be the Batch job's InstancePolicy, an object")
        accelerators = policy.get("accelerators") or []
        if not isinstance(accelerators, list) or len(accelerators) > 1 or not all(
                isinstance(a, Mapping) for a in accelerators):
            raise ValueError("machine.accelerators must be a list of at most one {type, count}")
        acc = accelerators[0] if accelerators else {}
        count = acc.get("count", 0)
        if isinstance(count, str) and count.isdigit():  # int64 fields may come as JSON strings
            count = int(count)
        return cls.from_json({"machine_type": policy.get("machineType"),
                              "provisioning_model": policy.get("provisioningModel") or "STANDARD",
                              "accelerator": acc.get("type"), "accelerator_count": count})


@dataclass(frozen=True)
class Rate:
    """USD per hour, on-demand (STANDARD) and Spot."""

    standard: float
    spot: float

    def of(self, provisioning_model: str) -> float:
        return self.spot if provisioning_model == "SPOT" else self.standard


@dataclass(frozen=True)
class PriceTable:
    machines: Mapping[str, Rate]  # machine type -> its vCPUs and memory, per hour
    accelerators: Mapping[str, Rate]  # GPU type -> one GPU, per hour
    region: str
    source: str
    as_of: str  # the day the prices were read

    def hourly(self, machine: Machine) -> float | None:
        """The machine's price per hour, GPUs included; None when the table lacks a part of it."""
        rate = self.machines.get(machine.machine_type)
        if rate is None:
            return None
        total = rate.of(machine.provisioning_model)
        if machine.accelerator_count:
            gpu = self.accelerators.get(machine.accelerator or "")
            if gpu is None:
                return None
            total += machine.accelerator_count * gpu.of(machine.provisioning_model)
        return total

    def describe(self) -> dict[str, str]:
        """Where the prices come from, as the status document and the webhook show it."""
        return {"currency": CURRENCY, "region": self.region, "source": self.source, "as_of": self.as_of}


# Google's Compute Engine prices in us-central1, per hour (USD), as the Cloud Billing Catalog
# lists them: the rows for us-central1-a of skypilot-org/skypilot-catalog catalogs/v8/gcp/vms.csv
# (commit 006059e0f18acb1341e22a27751e9f80df6ba92f; a machine type's row is its vCPUs and memory,
# a GPU's row one GPU), read 2026-12-07. Google's own pages (VM instance pricing, GPU pricing,
# Spot VMs pricing) are the reference; Spot prices change as often as once a day, so a deployment
# should set PRICE_TABLE from its billing export.
# - g2-standard-8 (8 vCPUs, 32 GB, carries 1 L4): 0.29358 on-demand, 0.11747 Spot;
# - nvidia-l4: 0.56004 on-demand, 0.2231 Spot; so g2-standard-8 with its L4: 0.85362 and 0.34057;
# - n2-standard-8 (8 vCPUs, 32 GB): the catalog's n2-standard-80 row (3.88472, 1.27008) / 10 (N2 is
#   priced per vCPU and GiB; its n2-standard-4 row, 0.19424 and 0.0635, agrees).
PRICES = PriceTable(
    machines={
        "g2-standard-8": Rate(standard=0.29358, spot=0.11747),
        "n2-standard-8": Rate(standard=0.388472, spot=0.127008),
    },
    accelerators={"nvidia-l4": Rate(standard=0.56004, spot=0.2231)},
    region="us-central1",
    source="https://cloud.google.com/compute/vm-instance-pricing (as listed by the Cloud Billing Catalog: "
           "github.com/skypilot-org/skypilot-catalog catalogs/v8/gcp/vms.csv)",
    as_of="2026-12-07",
)


@functools.lru_cache(maxsize=8)
def parse_table(text: str) -> PriceTable:
    """PRICES with the PRICE_TABLE setting's entries in place of its own: JSON
    `{"machines": {TYPE: {"STANDARD": usd_per_hour, "SPOT": usd_per_hour}}, "accelerators": {GPU:
    {...}}, "region", "source", "as_of"}`, every key optional; empty text is PRICES itself."""
    if not text.strip():
        return PRICES
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"PRICE_TABLE is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - {"machines", "accelerators", "region", "source", "as_of"}:
        raise ValueError("PRICE_TABLE must be an object with machines, accelerators, region, source, as_of")
    about = {k: raw.get(k, getattr(PRICES, k)) for k in ("region", "source", "as_of")}
    if not all(isinstance(v, str) for v in about.values()):
        raise ValueError("PRICE_TABLE's region, source and as_of must be strings")
    return PriceTable(machines={**PRICES.machines, **_rates(raw.get("machines", {}), "machines")},
                      accelerators={**PRICES.accelerators, **_rates(raw.get("accelerators", {}), "accelerators")},
                      **about)


def configured() -> PriceTable:
    """The price table of this process: PRICES with the PRICE_TABLE variable's entries."""
    return parse_table(os.environ.get("PRICE_TABLE", ""))


def _rates(value: Any, name: str) -> dict[str, Rate]:
    if not isinstance(value, dict):
        raise ValueError(f"PRICE_TABLE.{name} must be an object")
    out: dict[str, Rate] = {}
    for key, rate in value.items():
        if not isinstance(rate, dict) or set(rate) != set(PROVISIONING_MODELS) or not all(
                isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) and p >= 0
                for p in rate.values()):
            raise ValueError(f"PRICE_TABLE.{name}.{key} must be {{\"STANDARD\": usd_per_hour, \"SPOT\": usd_per_hour}}")
        out[str(key)] = Rate(standard=float(rate["STANDARD"]), spot=float(rate["SPOT"]))
    return out


def stage_machine(record: Record, stage: str) -> Machine | None:
    """What the stage's Batch job ran on, as the record keeps it (None: no job was made for it,
    or a record from before machines were recorded)."""
    raw = (record.stages.get(stage) or {}).get(STAGE_MACHINE_KEY)
    try:
        return Machine.from_json(raw) if raw is not None else None
    except ValueError:
        return None


def run_seconds(record: Record, stage: str) -> float | None:
    """The stage's run time in seconds, from its record times; None until it has ended."""
    st = record.stages.get(stage) or {}
    start, end = st.get("started_at"), st.get("finished_at")
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return None
    return max(0.0, (float(end) - float(start)) / 1000.0)


def stage_cost(record: Record, stage: str, table: PriceTable = PRICES) -> float | None:
    """The estimated USD cost of one stage: its billed seconds (at least a minute) at its machine's
    hourly price; None while it runs, without a machine, or on a machine the table lacks."""
    machine, seconds = stage_machine(record, stage), run_seconds(record, stage)
    if machine is None or seconds is None:
        return None
    hourly = table.hourly(machine)
    if hourly is None:
        return None
    return max(seconds, BILLING_MINIMUM_SECONDS) * hourly / 3600.0


def request_cost(record: Record, table: PriceTable = PRICES) -> float:
    """The estimated USD cost of the request so far: the sum of its stages' costs."""
    return sum(c for s in record.stages if (c := stage_cost(record, s, table)) is not None)


def configured_summary(record: Record) -> dict[str, Any] | None:
    """`summary` at the configured prices; None when PRICE_TABLE is malformed (a deployment error
    that must not fail a status read or a webhook: Terraform's variable validation catches it first)."""
    try:
        table = configured()
    except ValueError:
        return None
    return summary(record, table)


def summary(record: Record, table: PriceTable = PRICES) -> dict[str, Any]:
    """`cost` of the status document and the webhook body: `{estimated_usd, stages: {stage:
    {usd, run_seconds, usd_per_hour, machine_type, accelerator, accelerator_count,
    provisioning_model}}, prices: {currency, region, source, as_of}}`, one entry per stage that
    had a Batch job (`usd` null while it runs or when the table lacks its machine)."""
    stages: dict[str, Any] = {}
    for stage in record.stages:
        machine = stage_machine(record, stage)
        if machine is None:
            continue
        usd, seconds, hourly = stage_cost(record, stage, table), run_seconds(record, stage), table.hourly(machine)
        stages[stage] = {"usd": None if usd is None else round(usd, 6),
                         "run_seconds": None if seconds is None else round(seconds, 3),
                         "usd_per_hour": hourly, **machine.as_json()}
    return {"estimated_usd": round(request_cost(record, table), 6), "stages": stages, "prices": table.describe()}
