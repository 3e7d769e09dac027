"""One real sidecar (authz listener on, NGINX's request id as the dedup key), the recording upstream,
and nginx running deploy/nginx/example.conf in front of them, shared by the module's tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.processes import Process, free_port, tiergate_command
from tests.integration.ingress.nginx import RecordingApp, nginx_binary, serve_app, start_nginx
from tests.integration.sidecar.conftest import ACCOUNTS, MONTH_START, USAGE, write_replica

ROOT = Path(__file__).parents[3]
EDGE_USED = 995  # free tier: 1000 api_calls a month, so 5 left
TENANTS = [
    "free-light",
    "free-heavy",
    "free-edge",
    "starter-active",
    "pro-active",
    "pro-unpaid",
    "pro-overdue",
]
API_KEYS = {f"key-{tenant}": tenant for tenant in TENANTS}


@dataclass
class Stack:
    nginx_port: int
    sidecar_port: int
    authz_port: int
    app: RecordingApp
    sidecar: Process
    directory: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.nginx_port}{path}"


def start_sidecar(directory: Path, port: int, authz_port: int) -> Process:
    replica = directory / "replica.db"
    edge = {"tenant": "free-edge", "code": "api_calls", "period_start": MONTH_START, "value": EDGE_USED}
    write_replica(replica, ACCOUNTS, [*USAGE, edge])
    env = dict(os.environ) | {
        "TIERGATE_REPLICA_PATH": str(replica),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_AUTHZ_HOST": "127.0.0.1",
        "TIERGATE_AUTHZ_PORT": str(authz_port),
        "TIERGATE_AUTHZ_REQUEST_ID_HEADER": "X-Tiergate-Request-Id",
        "TIERGATE_DECISION_LOG_SAMPLE": "0",
        "TIERGATE_LOG_JSON": "false",
        "PYTHONUNBUFFERED": "1",
    }
    sidecar = Process("sidecar", tiergate_command("sidecar"), env, directory / "sidecar.log", ROOT)
    sidecar.start()
    sidecar.wait_http(f"http://127.0.0.1:{port}/readyz", lambda status: status == 200)
    return sidecar


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingApp]:
    yield from serve_app()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingApp) -> Iterator[Stack]:
    nginx_binary()  # skip before starting anything when there is no nginx
    directory = tmp_path_factory.mktemp("ingress")
    sidecar_port, authz_port, nginx_port = free_port(), free_port(), free_port()
    sidecar = start_sidecar(directory, sidecar_port, authz_port)
    try:
        nginx = start_nginx(directory / "nginx", API_KEYS, authz_port, upstream.port, nginx_port)
    except BaseException:
        sidecar.stop()
        raise
    try:
        yield Stack(nginx_port, sidecar_port, authz_port, upstream, sidecar, directory)
    finally:
        nginx.stop()
        sidecar.stop()
        if sys.exc_info()[0] is not None:
            print(sidecar.tail(), nginx.tail())
