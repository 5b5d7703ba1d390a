"""Configuration from the environment: the same names in Terraform, in the workflow and locally."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from typing import Any

from core import gcs, stages

# A setting is read from its name in capitals, except these; FIRESTORE_EMULATOR_HOST also turns the
# mirror's default on.
_RENAMED = {"project": "GOOGLE_CLOUD_PROJECT", "on_gcp": "K_SERVICE"}
_STRIPPED = ("dispatch_url", "auth_audience")


def _parse(kind: str, raw: str | None, name: str, default: Any) -> Any:
    """A setting of type `kind` from its variable's text (None: unset); `default` when unset or blank."""
    text = (raw or "").strip()
    if kind == "int":
        try:
            return int(text) if text else default
        except ValueError as exc:
            raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from exc
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        if text:
            raise ValueError(f"environment variable {name} must be true or false, got {text.lower()!r}")
        return default
    if kind.startswith("tuple"):  # comma-separated
        return tuple(x.strip() for x in text.split(",") if x.strip())
    return default if raw is None else raw


@dataclass(frozen=True)
class Settings:
    """Every setting the functions read. Build with :meth:`from_env`; tests pass values directly."""

    project: str = gcs.LOCAL_PROJECT
    region: str = "us-central1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    uploads_bucket: str = "splatpipe-uploads"
    data_bucket: str = "splatpipe-data"
    workflow_name: str = "reconstruct"
    max_concurrent_jobs: int = 2
    rate_limit_per_minute: int = 10
    dedup_window_seconds: int = 3600
    lease_seconds: int = 6 * 3600
    job_image: str = ""
    depth_model: str = stages.DEFAULT_DEPTH_MODEL
    # Extra buckets a request's `input` may name besides the uploads bucket.
    extra_input_buckets: tuple[str, ...] = field(default_factory=tuple)
    # Memorystore with in-transit encryption: REDIS_URL is rediss://:AUTH@host:port and this is the
    # server CA (PEM text). Empty: the system trust store.
    redis_ca_cert: str = ""
    # Memorystore replicates asynchronously: an accept is answered only once this many replicas
    # hold it (Redis WAIT, at most REDIS_ACK_TIMEOUT_MS), or else once Firestore does
    # (functions.intake.accept). 0: no waiting (the local stack's one Redis fsyncs every write).
    redis_replicas_to_ack: int = 0
    redis_ack_timeout_ms: int = 500
    # How long a finished request's record stays in Redis once Firestore holds its final version;
    # then Firestore alone answers for it (functions.lifecycle.access). 0: kept in Redis for ever.
    record_retention_seconds: int = 7 * 24 * 3600
    # Local stack only: the local Workflows engine's Executions API, gRPC ("127.0.0.1:PORT").
    workflows_emulator_host: str = ""
    # Local stack only: the local Batch runner's jobs REST API ("127.0.0.1:PORT").
    batch_emulator_host: str = ""
    # Local stack only: the folder of its processes' logs, where `GET /requests/{id}/log` reads a
    # request's lines (functions.lifecycle.request_log; on Google Cloud: Cloud Logging).
    local_log_dir: str = ""
    # The dispatch function's URL: `api` and `on_upload` poke it after an enqueue so the request
    # starts at once (Cloud Scheduler's tick covers a lost poke). Empty: no poke.
    dispatch_url: str = ""
    # Proxies in front of `api` that append the client address to X-Forwarded-For (Cloud Run's
    # front end: 1; an external HTTPS load balancer in front of it: 2). 0: ignore the header and
    # use the peer address. The caller is the entry that many places from the right, never one a
    # client wrote itself.
    trusted_proxy_hops: int = 0
    # When set, `Authorization: Bearer <Google ID token>` with this audience makes the verified
    # principal the rate-limit caller (an invalid token is a 401). Empty: the client address.
    auth_audience: str = ""
    # How many times a request is handed out (lease expiries) before it is failed.
    max_attempts: int = 3
    # Mirror records to Firestore `reconstructions/{id}`. Default: on with the emulator or on GCP.
    firestore_mirror: bool = False
    # Outputs in `GET /status` as V4 signed URLs valid this long (on GCP only; 0: gs:// URIs).
    signed_url_seconds: int = 3600
    # Set by Cloud Run / Cloud Functions (K_SERVICE): we are on Google Cloud.
    on_gcp: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of the environment now: one tuple of its values and a cache lookup."""
        return _from_values(tuple(map(os.environ.get, ENV_NAMES)))

    @property
    def local_mode(self) -> bool:
        """Not on Google Cloud: the local stack, whose own servers listen on loopback."""
        return not self.on_gcp

    @property
    def allowed_input_buckets(self) -> tuple[str, ...]:
        return (self.uploads_bucket, *self.extra_input_buckets)

    def workspace_uri(self, request_id: str) -> str:
        """Where a request's stages write."""
        return f"gs://{self.data_bucket}/jobs/{request_id}"


_FIELDS = tuple((f, _RENAMED.get(f.name, f.name.upper())) for f in dataclasses.fields(Settings))
ENV_NAMES = (*(name for _, name in _FIELDS), "FIRESTORE_EMULATOR_HOST")
"""Every variable :meth:`Settings.from_env` reads, and its cache key: the settings are built once
per distinct set of values, so a changed variable is seen by the next call."""


@functools.lru_cache(maxsize=16)
def _from_values(values: tuple[str | None, ...]) -> Settings:
    env = dict(zip(ENV_NAMES, values, strict=True))
    on_gcp = bool(env["K_SERVICE"])
    defaults = {"firestore_mirror": bool(env["FIRESTORE_EMULATOR_HOST"]) or on_gcp}
    given = {f.name: _parse(str(f.type), env[name], name, defaults.get(f.name, f.default))
             for f, name in _FIELDS if f.name != "on_gcp"}
    for name in _STRIPPED:
        given[name] = given[name].strip()
    return Settings(**given, on_gcp=on_gcp)
