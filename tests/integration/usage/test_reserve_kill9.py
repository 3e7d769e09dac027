"""kill -9 of a sidecar right after it answered reservations: every one answered `reserved` is
counted after the restart (it was committed before the answer), and replaying them counts nothing;
with `synchronous=FULL` (fsync, the writer thread) and with `normal` (no fsync; commits on the
event loop's thread, the chart's choice on an emptyDir: docs/adr/0022)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.usage.conftest import ROOT, eventually

TIERGATE = Path(sys.executable).with_name("tiergate")


def start_sidecar(tmp_path: Path, port: int, sync: str) -> subprocess.Popen[bytes]:
    env = {
        "TIERGATE_OUTBOX_SYNC": sync,
        **{k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")},
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_REPLICA_PATH": str(tmp_path / "sidecar" / "replica.db"),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_LOG_LEVEL": "warning",
    }  # static mode (no daemon): nothing delivers, so the outbox alone holds what was reserved
    return subprocess.Popen(
        [str(TIERGATE), "sidecar"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["full", "normal"])
async def test_kill_9_after_reserving_loses_no_reservation(
    tmp_path: Path, unused_tcp_port: int, sync: str
) -> None:
    base = f"http://127.0.0.1:{unused_tcp_port}"
    process = start_sidecar(tmp_path, unused_tcp_port, sync)
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(base + "/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            def reservation(n: int) -> dict[str, Any]:
                # free tier: api_calls limit 1000; sum of 1..4 over 200 reservations stays below it
                quantity = 1 + n % 4
                return {"tenant": "t_k9", "feature": "api_calls", "quantity": quantity, "reserve": True,
                        "transaction_id": f"r{n}"}  # fmt: skip

            await eventually(ready, within=30)
            answers = await asyncio.gather(
                *(post_json(session, base + "/v1/check", reservation(n)) for n in range(200))
            )
            process.send_signal(signal.SIGKILL)  # at once: no shutdown, no flush
            process.wait(timeout=10)
            reserved = [
                reservation(n)["quantity"]
                for n, (status, body) in enumerate(answers)
                if status == 200 and body["reservation"]["reserved"]
            ]
            assert len(reserved) == 200

            process = start_sidecar(tmp_path, unused_tcp_port, sync)
            await eventually(ready, within=30)
            async with session.get(base + "/v1/check?tenant=t_k9&feature=api_calls") as response:
                assert (await response.json())["used"] == sum(reserved)
            replays = await asyncio.gather(
                *(post_json(session, base + "/v1/check", reservation(n)) for n in range(200))
            )
            assert all(s == 200 and b["reservation"]["replayed"] for s, b in replays)
            async with session.get(base + "/v1/check?tenant=t_k9&feature=api_calls") as response:
                assert (await response.json())["used"] == sum(reserved)
    finally:
        process.kill()
        process.wait(timeout=10)
