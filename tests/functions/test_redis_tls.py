"""Memorystore-style Redis: TLS with the instance's own CA (REDIS_CA_CERT) and AUTH, for real."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from emulator.processes import free_port, port_open, start_process
from emulator.services import redis_server_binary
from functions.config import Settings
from functions.intake.validation import NewRequest
from functions.queue_store import connection as redis_conn
from functions.queue_store.store import RequestQueue


def _ca_and_server_cert(out: Path) -> str:
    """A CA and a server certificate it signs (for 127.0.0.1); returns the CA PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_key, srv_key = key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Memorystore CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(2)
           .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (out / "server.crt").write_bytes(srv.public_bytes(pem))
    (out / "server.key").write_bytes(srv_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                           serialization.NoEncryption()))
    ca_pem = ca.public_bytes(pem).decode()
    (out / "ca.crt").write_text(ca_pem)
    return ca_pem


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    d = tmp_path_factory.mktemp("redis-tls")
    ca_pem = _ca_and_server_cert(d)
    port = free_port()
    cmd = [redis_server_binary(), "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
           "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
           "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no", "--requirepass", "s3cret",
           "--save", "", "--dir", str(d)]
    proc = start_process("redis-tls", cmd, d, ready=lambda: port_open(port), timeout=20)
    yield port, ca_pem
    proc.stop()


def test_rediss_with_the_instance_ca_and_auth(tls_redis: tuple[int, str]) -> None:
    port, ca_pem = tls_redis
    settings = Settings(redis_url=f"rediss://:s3cret@127.0.0.1:{port}/0", redis_ca_cert=ca_pem)
    client = redis_conn.client(settings)
    assert client.ping()
    q = RequestQueue(client)
    res = q.enqueue(NewRequest("tls", "gs://b/v.mp4", 5, {"preset": "standard"}, ("frames",)), token_sha256="t")
    assert q.take(60).request_id == res.request_id


def test_rediss_refuses_an_unknown_ca_and_a_wrong_password(tls_redis: tuple[int, str]) -> None:
    port, ca_pem = tls_redis
    # No REDIS_CA_CERT: the system trust store does not know the instance's CA.
    untrusted = redis.Redis.from_url(f"rediss://:s3cret@127.0.0.1:{port}/0",
                                     **redis_conn.connection_kwargs(Settings(redis_url=f"rediss://127.0.0.1:{port}")))
    with pytest.raises(redis.ConnectionError) as err:
        untrusted.ping()
    assert isinstance(err.value.__cause__ or err.value.__context__, ssl.SSLError) or "certificate" in str(err.value)
    wrong = redis.Redis.from_url(f"rediss://:nope@127.0.0.1:{port}/0", **redis_conn.connection_kwargs(
        Settings(redis_url=f"rediss://127.0.0.1:{port}", redis_ca_cert=ca_pem)))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
