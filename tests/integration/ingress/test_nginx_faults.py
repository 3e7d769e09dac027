"""The sidecar down or silent behind the shipped NGINX config: fail closed (503) by default, open only
where a location says so, and never wedged."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.processes import free_port
from tests.integration.ingress.conftest import API_KEYS
from tests.integration.ingress.nginx import RecordingApp, nginx_binary, start_nginx
from tests.integration.ingress.test_nginx import call


@pytest.fixture
def silent_sidecar() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_sidecar_down_is_503_and_the_upstream_sees_nothing(tmp_path: Path, upstream: RecordingApp) -> None:
    nginx_binary()
    port = free_port()
    process = start_nginx(
        tmp_path / "nginx", API_KEYS, free_port(), upstream.port, port
    )  # nothing listens there
    try:
        before = len(upstream.seen)
        answer = call(f"http://127.0.0.1:{port}/api/v1/things", {"X-Api-Key": "key-free-light"})
        assert answer.status == 503
        assert answer.body["reason"] == "authz_unavailable"
        assert len(upstream.seen) == before
        # A location that chose to fail open passes, with no tenant or tier the sidecar did not give.
        opened = call(
            f"http://127.0.0.1:{port}/status/page", {"X-Api-Key": "key-free-light", "X-Tiergate-Tier": "pro"}
        )
        assert opened.status == 200
        seen = upstream.last().headers
        assert not {"x-tenant-id", "x-tiergate-tier", "x-tiergate-tenant"} & set(seen)
        assert (
            "connect() failed" in (tmp_path / "nginx" / "error.log").read_text()
        )  # the operator can see why
    finally:
        process.stop()


def test_a_silent_sidecar_is_503_after_the_configured_timeout(
    tmp_path: Path, upstream: RecordingApp, silent_sidecar: int
) -> None:
    nginx_binary()
    port = free_port()
    process = start_nginx(tmp_path / "nginx", API_KEYS, silent_sidecar, upstream.port, port)
    try:
        answer = call(f"http://127.0.0.1:{port}/api/v1/things", {"X-Api-Key": "key-free-light"})
        assert answer.status == 503
        assert "timed out" in (tmp_path / "nginx" / "error.log").read_text()
    finally:
        process.stop()
