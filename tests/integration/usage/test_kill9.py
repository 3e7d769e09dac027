"""kill -9 of a sidecar process mid-delivery loses nothing and counts nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.daemon.conftest import FEED_TOKEN
from tests.integration.usage.conftest import ROOT, DaemonServer, events, eventually

TIERGATE = Path(sys.executable).with_name("tiergate")


def start_sidecar(tmp_path: Path, port: int, daemon_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_REPLICA_PATH": str(tmp_path / "sidecar" / "replica.db"),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_DAEMON_URL": daemon_url,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_DELIVERY_BATCH_SIZE": "25",  # many small deliveries: the kill lands mid-way
        "TIERGATE_DELIVERY_BACKOFF_MAX_S": "0.2",
        "TIERGATE_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [str(TIERGATE), "sidecar"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return response.status, await response.json()


@pytest.mark.slow
async def test_kill_9_mid_delivery_loses_nothing(
    daemon: DaemonServer, tmp_path: Path, unused_tcp_port: int
) -> None:
    base = f"http://127.0.0.1:{unused_tcp_port}"
    process = start_sidecar(tmp_path, unused_tcp_port, daemon.url)
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    return bool((await get_json(session, base + "/readyz"))[0] == 200)
                except aiohttp.ClientError:
                    return False

            await eventually(ready, within=30)
            for n in range(20):
                batch = events("t_kill", 100, prefix=f"k{n}")
                async with session.post(base + "/v1/usage/batch", json={"events": batch}) as response:
                    assert response.status == 202
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            at_kill = await daemon.used("t_kill")

            process = start_sidecar(tmp_path, unused_tcp_port, daemon.url)
            await eventually(ready, within=30)

            async def all_delivered() -> bool:
                return await daemon.used("t_kill") == 2000

            await eventually(all_delivered, within=30)

            async def settled() -> bool:
                _, status = await get_json(session, base + "/v1/status")
                usage = status["usage"]
                return bool(usage["backlog"] == 0 and usage["pending"]["counters"] == 0)

            await eventually(settled, within=30)
            _, decision = await get_json(session, base + "/v1/check?tenant=t_kill&feature=api_calls")
            assert decision["used"] == 2000 and await daemon.used("t_kill") == 2000
            print(f"daemon had {at_kill} of 2000 events when the sidecar was killed")
    finally:
        process.kill()
        process.wait(timeout=10)
