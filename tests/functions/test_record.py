"""core.record.Record: parsed from the queue's Redis hash, and each view of it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

from core.record import Record, nested
from functions.status.view import internal_record_status, record_status

T0 = 1_700_000_000_000  # ms; 2023-11-14T22:13:20Z
ERROR = {"code": "sfm_failed", "message": "too few images", "stage": "sfm"}
WARNING = {"code": "no_mesh", "message": "mesh skipped", "stage": "mesh"}


def _hash(**fields: str) -> dict[str, str]:
    """A record's hash as the enqueue and update scripts leave it (functions/queue_store/lua/*.lua)."""
    doc = {"session_id": "s1", "input": "gs://up/s1/v.mp4", "options": {"preset": "preview"},
           "stages_requested": ["frames", "sfm", "mesh"], "token_sha256": "ab" * 32, "source": "api",
           "webhook_url": "https://example.com/h"}
    return {"request_id": "r1", "state": "FAILED", "priority": "2", "created_at": str(T0),
            "updated_at": str(T0 + 5000), "seq": "7", "version": "4", "attempts": "1", "doc": json.dumps(doc),
            "stage": "sfm", "execution": "",
            "stages": json.dumps({"frames": {"state": "SUCCEEDED", "started_at": T0, "finished_at": T0 + 1000,
                                             "batch_job": "jobs/f"},
                                  "sfm": {"state": "FAILED", "started_at": T0 + 1000, "finished_at": T0 + 5000},
                                  "mesh": {"state": "FAILED", "started_at": T0 + 2000}}),
            "progress": json.dumps({"frames": 1, "sfm": 0.5}), "outputs": json.dumps({"frames_zip": "gs://d/f.zip"}),
            "error": json.dumps(ERROR), "warnings": json.dumps([WARNING]),
            "metrics": json.dumps({"frames": {"count": 40}}), **fields}


def test_from_redis() -> None:
    rec = Record.from_redis(_hash())
    assert (rec.request_id, rec.state, rec.priority, rec.seq, rec.version, rec.attempts) == ("r1", "FAILED", 2, 7, 4, 1)
    assert rec.stages_requested == ("frames", "sfm", "mesh") and rec.options == {"preset": "preview"}
    assert rec.callback_token_sha256 == "ab" * 32 and rec.webhook_url == "https://example.com/h"
    assert rec.execution is None and rec.lease_expires_at is None and rec.stage == "sfm"
    assert rec.error == ERROR and rec.warnings == (WARNING,) and rec.progress == {"frames": 1, "sfm": 0.5}
    # What a new record has not set yet is absent from its hash.
    new = Record.from_redis({k: v for k, v in _hash(state="QUEUED").items()
                             if k not in {"stage", "stages", "progress", "outputs", "error", "warnings", "metrics"}})
    assert (new.stage, new.stages, new.progress, new.outputs, new.error, new.warnings, new.metrics) == (
        None, {}, {}, {}, None, (), {})


def test_status() -> None:
    view = record_status(Record.from_redis(_hash()), link=lambda uri: uri.replace("gs://", "https://dl/"))
    assert view["stages"]["frames"] == {
        "state": "SUCCEEDED", "started_at": "2023-11-14T22:13:20.000Z", "finished_at": "2023-11-14T22:13:21.000Z",
        "batch_job": "jobs/f", "message": None, "heartbeat_at": None, "live_preview_at": None,
        "latest_splat_at": None, "latest_splat_step": None, "error": None}
    # A failed stage carries the request's error, or the warning it left when best-effort.
    assert view["stages"]["sfm"]["error"] == {"code": "sfm_failed", "message": "too few images"}
    assert view["stages"]["mesh"]["error"] == {"code": "no_mesh", "message": "mesh skipped"}
    assert view["progress"] == {"frames": 1.0, "sfm": 0.5, "mesh": 0.0}
    assert view["outputs"] == {"frames_zip": "https://dl/d/f.zip"}
    assert view["created_at"] == "2023-11-14T22:13:20.000Z" and view["updated_at"] == "2023-11-14T22:13:25.000Z"
    assert {k: view[k] for k in ("request_id", "state", "priority", "session_id", "stages_requested", "stage",
                                 "error", "warnings", "metrics")} == {
        "request_id": "r1", "state": "FAILED", "priority": 2, "session_id": "s1",
        "stages_requested": ["frames", "sfm", "mesh"], "stage": "sfm", "error": ERROR, "warnings": [WARNING],
        "metrics": {"frames": {"count": 40}}}
    assert "attempts" not in view and "webhook_url" not in view


def test_internal_status() -> None:
    rec = Record.from_redis(_hash(state="PROCESSING", lease_expires_at=str(T0 + 60_000), execution="ex/1"))
    view = internal_record_status(rec)
    assert {k: view[k] for k in ("attempts", "execution", "lease_expires_at", "webhook_url", "source")} == {
        "attempts": 1, "execution": "ex/1", "lease_expires_at": "2023-11-14T22:14:20.000Z",
        "webhook_url": "https://example.com/h", "source": "api"}
    assert {k: v for k, v in view.items() if k not in {"attempts", "execution", "lease_expires_at",
                                                       "webhook_url", "source"}} == record_status(rec)


def test_firestore_fields() -> None:
    fields = dict(Record.from_redis(_hash()).firestore_fields())
    at = dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)
    assert fields[("state",)] == "FAILED" and fields[("created_at",)] == at
    assert fields[("stages_requested",)] == ["frames", "sfm", "mesh"] and fields[("attempts",)] == 1
    assert fields[("stages", "frames", "batch_job")] == "jobs/f" and fields[("stages", "frames", "started_at")] == at
    assert fields[("stages", "mesh", "finished_at")] is None and ("stages", "sfm", "batch_job") not in fields
    assert fields[("progress", "frames")] == 1.0 and fields[("outputs",)] == {"frames_zip": "gs://d/f.zip"}
    assert fields[("error",)] == ERROR and fields[("warnings",)] == [WARNING]
    # A COMPLETED request has no error (a best-effort stage's failure is one of its warnings).
    completed = dict(Record.from_redis(_hash(state="COMPLETED", error="")).firestore_fields())
    assert completed[("error",)] is None
    # Nor a deleted one or one queued again; a running one leaves `error` to its failing stage.
    for state in ("DELETED", "QUEUED"):
        assert dict(Record.from_redis(_hash(state=state, error="", outputs="")).firestore_fields())[("error",)] is None
    running = dict(Record.from_redis(_hash(state="PROCESSING", error="", outputs="")).firestore_fields())
    assert ("error",) not in running and running[("outputs",)] == {}


def test_a_record_round_trips_through_its_firestore_copy_and_its_redis_hash() -> None:
    """What the mirror writes is what `from_firestore` reads back (the archive, the restore), and
    `redis_fields` is the hash `from_redis` reads (restore.lua adds the queue's bookkeeping)."""
    rec = Record.from_redis(_hash())
    back = Record.from_firestore(rec.request_id, nested(rec.firestore_fields()), rec.version)
    assert replace(back, seq=rec.seq) == rec
    h = {"request_id": rec.request_id, "state": rec.state, "updated_at": str(rec.updated_at), "seq": str(rec.seq),
         "version": str(rec.version), **rec.redis_fields()}
    assert Record.from_redis(h) == rec


def test_execution_argument() -> None:
    rec = Record.from_redis(_hash())
    jobs = {"stages": ["frames"], "disabled": ["sfm", "mesh"], "jobs": {"frames": {}}}
    assert rec.execution_argument("gs://d/jobs/r1", jobs) == {
        "request_id": "r1", "workspace": "gs://d/jobs/r1", "input": "gs://up/s1/v.mp4",
        "options": {"preset": "preview"}, "priority": 2, **jobs, "webhook_url": "https://example.com/h"}
    doc = json.loads(_hash()["doc"])
    del doc["webhook_url"]
    assert "webhook_url" not in Record.from_redis(_hash(doc=json.dumps(doc))).execution_argument("gs://w", jobs)


def test_request_json() -> None:
    assert Record.from_redis(_hash()).request_json() == {
        "request_id": "r1", "input": "gs://up/s1/v.mp4", "options": {"preset": "preview"},
        "stages": ["frames", "sfm", "mesh"]}
