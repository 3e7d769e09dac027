"""A TCP forwarder on 127.0.0.1 that injects network faults in front of the real sidecar.

It counts the connections it accepts (so tests see kept-alive reuse) and can drop the next N
connections as soon as their request arrives (a restarted sidecar, a reset) or hold them unanswered
(a wedged one). Threads, so the blocking client can be tested against it as well as the async one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class FaultyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self.drop_next = 0  # connections to close when their first bytes arrive
        self.hold = False  # read requests, never answer
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closing = False
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.drop_next > 0:
            self.drop_next -= 1
            conn.recv(65536)
            conn.close()
            return
        if self.hold:
            while conn.recv(65536):
                pass
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self._sockets.append(upstream)
        threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
        _pump(conn, upstream)

    def close(self) -> None:
        self._closing = True
        self._server.close()
        for sock in self._sockets:
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def faulty_proxy(target_port: int) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(target_port)
    proxy._thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
