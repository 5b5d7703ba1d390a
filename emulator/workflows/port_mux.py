"""One TCP port for both fronts of the local engine: gRPC (HTTP/2) and REST (HTTP/1.1).

`WORKFLOWS_EMULATOR_HOST` names one address; a client may speak either protocol to it. Each
connection is routed by its first bytes (the HTTP/2 client preface starts with "PRI * HTTP/2.0")
and then relayed byte for byte to the matching back end on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

H2_PREFACE = b"PRI * HTTP/2.0"


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class PortMux:
    def __init__(self, http_port: int, grpc_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backends = {"http": http_port, "grpc": grpc_port}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self._closed = threading.Event()

    def start(self) -> PortMux:
        threading.Thread(target=self._accept, name="workflows-mux", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(30)
            while True:  # peek until the bytes decide: the HTTP/2 preface, or anything else
                head = client.recv(len(H2_PREFACE), socket.MSG_PEEK)
                if not head:
                    client.close()
                    return
                if len(head) >= len(H2_PREFACE) or not H2_PREFACE.startswith(head):
                    break
                time.sleep(0.005)
            client.settimeout(None)
            port = self.backends["grpc" if head.startswith(H2_PREFACE) else "http"]
            upstream = socket.create_connection(("127.0.0.1", port))
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        t = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        t.start()
        _pump(client, upstream)
        t.join()
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.close()
