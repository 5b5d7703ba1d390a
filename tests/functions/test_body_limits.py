"""Oversized bodies are refused before they are read: against the `api` function served as Cloud
Run serves it (functions-framework under gunicorn), from a raw socket that keeps sending until an
answer comes, with the server process's memory measured."""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fn_testlib import FUNCTIONS_MAIN, REPO, Buckets

from emulator.processes import HOST, free_port, start_process

MiB = 1024 * 1024
HUGE = 200 * MiB


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn's arbiter and its worker)."""
    total = 0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@pytest.fixture
def api_server(fn_env: dict, buckets: Buckets, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    ff = Path(sys.executable).with_name("functions-framework")
    env = {**fn_env, "RATE_LIMIT_PER_MINUTE": "1000", "THREADS": "4",
           "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
    proc = start_process("api", [str(ff), "--target", "api", "--source", str(FUNCTIONS_MAIN), "--host", HOST,
                                 "--port", str(port)], tmp_path, env=env, cwd=REPO,
                         ready=lambda: _answers(port), timeout=60)
    yield HOST, port
    proc.stop()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(1) != b""
    except OSError:
        return False


def _send_until_answered(addr: tuple[str, int], head: bytes, total: int, chunked: bool,
                         timeout: float = 60) -> tuple[int, dict, int, float]:
    """Send `head` then up to `total` body bytes in 256 KiB pieces, stopping as soon as an answer
    arrives (or the server stops reading); (status, JSON body, bytes sent, seconds)."""
    piece = b"\0" * (256 * 1024)
    sent = 0
    t0 = time.monotonic()
    s = socket.create_connection(addr, timeout=10)
    s.sendall(head)
    s.setblocking(False)
    answer = b""
    try:
        while time.monotonic() - t0 < timeout:
            readable, writable, _ = select.select([s], [s] if sent < total else [], [], 0.5)
            if readable:
                break
            if writable and sent < total:
                data = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
                try:
                    n = s.send(data) if not chunked else (s.sendall(data) or len(data))
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # the server closed the connection: its answer is waiting
                    break
                sent += n
        s.setblocking(True)
        s.settimeout(10)
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    finally:
        s.close()
    took = time.monotonic() - t0
    head_text, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(body[: _length(answer)] or b"{}"), sent, took


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _head(path: str, content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n").encode()


@pytest.mark.parametrize(("path", "ctype", "chunked"), [
    ("/preprocess-video?session_id=big", "video/mp4", True),
    ("/preprocess-video?session_id=big", "video/mp4", False),
    ("/trigger-reconstruction", "application/json", True),
    ("/trigger-reconstruction", "application/json", False),
])
def test_a_200_mib_body_is_refused_early_and_the_process_does_not_grow(api_server: tuple[str, int], path: str,
                                                                      ctype: str, chunked: bool) -> None:
    pid_rss_before = _rss_kib(_server_pid(api_server))
    status, body, sent, took = _send_until_answered(api_server, _head(path, ctype, None if chunked else HUGE),
                                                    HUGE, chunked)
    grew = (_rss_kib(_server_pid(api_server)) - pid_rss_before) / 1024
    print(f"{path} {'chunked' if chunked else 'Content-Length'}: {status} after {sent / MiB:.1f} MiB sent, "
          f"{took:.2f} s; the server grew {grew:.1f} MiB")
    assert status in (411, 413), (status, body)
    assert set(body["error"]) == {"code", "message"}
    assert sent < 8 * MiB, f"{sent / MiB:.0f} MiB were sent before the answer"
    assert took < 5, f"the answer took {took:.1f} s"
    assert grew < 16, f"the server grew by {grew:.0f} MiB"
    # And it still answers.
    status, body, _, _ = _send_until_answered(api_server, f"GET /status HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
                                              0, False)
    assert status == 401 and body["error"]["code"] == "token_required"


def _server_pid(addr: tuple[str, int]) -> int:
    """The PID of the process listening on the port (the gunicorn arbiter)."""
    port_hex = f"{addr[1]:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(":" + port_hex) and fields[3] == "0A":
            inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    raise LookupError(addr)
