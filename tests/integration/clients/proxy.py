"""A TCP forwarder on 127.0.0.1 that injects network faults in front of the real sidecar.

It counts the connections it accepts (so tests see kept-alive reuse) and can drop the next N
connections as soon as their request arrives (a restarted sidecar, a reset) or hold them unanswered
(a wedged one). Threads, so the blocking client can be tested against it as well as the async one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
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
        self._lock = threading.Lock()
        self._closing = False
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        """Run `target` in a thread that `close` waits for (none starts once the proxy is closing)."""
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            if self._closing:
                return
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        """Track `sock` so `close` ends it; False, and closed now, if the proxy is already closing."""
        with self._lock:
            if not self._closing:
                self._sockets.append(sock)
                return True
        sock.close()
        return False

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # the proxy closed
                return
            self.accepted += 1
            if self._keep(conn):
                self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        # OSError: the proxy was closed under this connection (possibly before this thread ran).
        with suppress(OSError):
            if self.drop_next > 0:
                self.drop_next -= 1
                conn.recv(65536)
                conn.shutdown(socket.SHUT_RDWR)
                return
            if self.hold:
                while conn.recv(65536):
                    pass
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            if self._keep(upstream):
                self._spawn(_pump, upstream, conn)
                _pump(conn, upstream)

    def live_threads(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def close(self) -> None:
        """Stop accepting, end every connection, and wait for every thread: nothing outlives the proxy."""
        with self._lock:
            self._closing = True
        for sock in [self._server, *self._sockets]:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
        for thread in self._threads:
            thread.join(timeout=30)
        for sock in [self._server, *self._sockets]:
            sock.close()  # only now: a closed descriptor's number is reused, a blocked thread would read that


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
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
