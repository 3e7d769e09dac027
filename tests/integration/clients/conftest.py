"""One real `tiergate sidecar` process on 127.0.0.1 for every client test (Python and TypeScript).

Its replica holds the sidecar tests' tenants (one per interesting state); tests that record usage
use tenants of their own, so they stay independent while sharing the process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.processes import Process, free_port, tiergate_command
from tests.integration.sidecar.conftest import ACCOUNTS, USAGE, write_replica

ROOT = Path(__file__).parents[3]


@dataclass(frozen=True)
class RunningSidecar:
    url: str
    check_url: str  # the check listener (TIERGATE_CHECK_PORT): GET /v1/check alone
    process: Process
    home: Path


@pytest.fixture(scope="session")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    home = tmp_path_factory.mktemp("client-sidecar")
    shutil.copytree(ROOT / "policies", home / "policies")
    write_replica(home / "replica.db", ACCOUNTS, USAGE)
    port, check_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        TIERGATE_LOG_JSON="false",
        TIERGATE_SIDECAR_HOST="127.0.0.1",
        TIERGATE_SIDECAR_PORT=str(port),
        TIERGATE_CHECK_PORT=str(check_port),
        TIERGATE_REPLICA_PATH=str(home / "replica.db"),
        TIERGATE_PLANS=str(ROOT / "plans" / "plans.yaml"),
        TIERGATE_POLICIES=str(home / "policies"),
        TIERGATE_DECISION_LOG_SAMPLE="0",
    )
    process = Process("sidecar", tiergate_command("sidecar"), env, home / "sidecar.log", home)
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http(url + "/readyz", lambda status: status == 200)
        yield RunningSidecar(url, f"http://127.0.0.1:{check_port}", process, home)
    finally:
        process.stop()
