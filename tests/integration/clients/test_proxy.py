"""The fault-injecting proxy itself: closing it ends its threads, so none raises into a later test."""

from __future__ import annotations

import socket

from tests.integration.clients.proxy import faulty_proxy


def test_closing_the_proxy_ends_every_thread_even_one_not_yet_started() -> None:
    # A held connection closed with the proxy at once: its thread may first run after the close
    # (a loaded machine). It used to raise EBADF there, and pytest failed whichever test ran next.
    with socket.create_server(("127.0.0.1", 0)) as target:
        for _ in range(20):
            with faulty_proxy(target.getsockname()[1]) as proxy:
                proxy.hold = True
                client = socket.create_connection(("127.0.0.1", proxy.port))
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            client.close()
            assert proxy.live_threads() == 0
