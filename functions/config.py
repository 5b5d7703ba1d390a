"""Configuration from the environment: the same names in Terraform, in the workflow and locally."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name} must be true or false, got {raw!r}")


def _list(name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


@dataclass(frozen=True)
class Settings:
    """Every setting the functions read. Build with :meth:`from_env`; tests pass values directly."""

    project: str = "splatpipe-local"
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
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    # Extra buckets a request's `input` may name besides the uploads bucket.
    extra_input_buckets: tuple[str, ...] = field(default_factory=tuple)
    # Memorystore with in-transit encryption: REDIS_URL is rediss://:AUTH@host:port and this is the
    # server CA (PEM text). Empty: the system trust store.
    redis_ca_cert: str = ""
    # Local stack only: the local Workflows engine's Executions REST API ("127.0.0.1:PORT").
    workflows_emulator_host: str = ""
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
        d = cls()
        return cls(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", d.project),
            region=os.environ.get("REGION", d.region),
            redis_url=os.environ.get("REDIS_URL", d.redis_url),
            uploads_bucket=os.environ.get("UPLOADS_BUCKET", d.uploads_bucket),
            data_bucket=os.environ.get("DATA_BUCKET", d.data_bucket),
            workflow_name=os.environ.get("WORKFLOW_NAME", d.workflow_name),
            max_concurrent_jobs=_int("MAX_CONCURRENT_JOBS", d.max_concurrent_jobs),
            rate_limit_per_minute=_int("RATE_LIMIT_PER_MINUTE", d.rate_limit_per_minute),
            dedup_window_seconds=_int("DEDUP_WINDOW_SECONDS", d.dedup_window_seconds),
            lease_seconds=_int("LEASE_SECONDS", d.lease_seconds),
            job_image=os.environ.get("JOB_IMAGE", d.job_image),
            depth_model=os.environ.get("DEPTH_MODEL", d.depth_model),
            extra_input_buckets=_list("EXTRA_INPUT_BUCKETS"),
            redis_ca_cert=os.environ.get("REDIS_CA_CERT", ""),
            workflows_emulator_host=os.environ.get("WORKFLOWS_EMULATOR_HOST", ""),
            dispatch_url=os.environ.get("DISPATCH_URL", "").strip(),
            trusted_proxy_hops=_int("TRUSTED_PROXY_HOPS", d.trusted_proxy_hops),
            auth_audience=os.environ.get("AUTH_AUDIENCE", "").strip(),
            max_attempts=_int("MAX_ATTEMPTS", d.max_attempts),
            firestore_mirror=_bool("FIRESTORE_MIRROR", bool(os.environ.get("FIRESTORE_EMULATOR_HOST")
                                                            or os.environ.get("K_SERVICE"))),
            signed_url_seconds=_int("SIGNED_URL_SECONDS", d.signed_url_seconds),
            on_gcp=bool(os.environ.get("K_SERVICE")),
        )

    @property
    def local_mode(self) -> bool:
        """Not on Google Cloud: the local stack, whose own servers listen on loopback."""
        return not self.on_gcp

    @property
    def allowed_input_buckets(self) -> tuple[str, ...]:
        return (self.uploads_bucket, *self.extra_input_buckets)

    def workspace_uri(self, request_id: str) -> str:
        """Where a request's stages write: DESIGN storage layout."""
        return f"gs://{self.data_bucket}/jobs/{request_id}"
