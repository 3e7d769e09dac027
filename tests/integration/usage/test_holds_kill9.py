"""kill -9 of a real sidecar process holding and settling: every hold answered 201 is still counted
after the restart; a settle cut off by the kill, retried, records its usage exactly once, and the
daemon (real delivery, both mirror backends) ends with exactly the settled quantities."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.usage.conftest import DaemonServer, eventually
from tests.integration.usage.test_kill9 import start_sidecar

TENANT = "t_hold_k9"
HOLDS = 100  # of 5 api_calls each: 500 of the free tier's 1000


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


def asked(n: int) -> int:
    return 1 + n % 5  # what hold n really used: 1..5 of its 5


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["full", "normal"])
async def test_kill_9_while_settling_loses_nothing_and_counts_nothing_twice(
    daemon: DaemonServer, tmp_path: Path, unused_tcp_port: int, sync: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # normal: commits on the event loop's own connection, no fsync (docs/adr/0022)
    monkeypatch.setenv("TIERGATE_OUTBOX_SYNC", sync)
    base = f"http://127.0.0.1:{unused_tcp_port}"
    process = start_sidecar(tmp_path, unused_tcp_port, daemon.url)

    def restart() -> subprocess.Popen[bytes]:
        process.send_signal(signal.SIGKILL)  # at once: no shutdown, no flush
        process.wait(timeout=10)
        return start_sidecar(tmp_path, unused_tcp_port, daemon.url)

    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(base + "/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            async def used() -> int:
                return int((await get(session, f"{base}/v1/check?tenant={TENANT}&feature=api_calls"))["used"])

            await eventually(ready, within=30)
            created = await asyncio.gather(
                *(
                    post(
                        session,
                        base + "/v1/holds",
                        {"tenant": TENANT, "feature": "api_calls", "quantity": 5, "transaction_id": f"k{n}"},
                    )
                    for n in range(HOLDS)
                )
            )
            assert all(status == 201 for status, _ in created)
            hold_ids = [body["hold_id"] for _, body in created]

            process = restart()  # holds answered 201 are durable
            await eventually(ready, within=30)
            assert await used() == 5 * HOLDS

            async def settle(n: int) -> tuple[int, Any]:
                return await post(session, f"{base}/v1/holds/{hold_ids[n]}/settle", {"quantity": asked(n)})

            tasks = [asyncio.create_task(settle(n)) for n in range(HOLDS)]
            answered_before_kill = 0
            for next_done in asyncio.as_completed(tasks):
                with contextlib.suppress(aiohttp.ClientError):
                    await next_done
                    answered_before_kill += 1
                if answered_before_kill >= HOLDS // 4:
                    break
            process = restart()  # mid-way through the settles
            finished = await asyncio.gather(*tasks, return_exceptions=True)
            before = {n for n, r in enumerate(finished) if isinstance(r, tuple) and r[0] == 200}
            assert len(before) >= HOLDS // 4

            await eventually(ready, within=30)
            retried = await asyncio.gather(*(settle(n) for n in range(HOLDS)))  # the clients retry
            assert all(status == 200 for status, _ in retried), retried
            assert all(body["settled_quantity"] == asked(n) for n, (_, body) in enumerate(retried))
            assert all(retried[n][1]["replayed"] for n in before)

            total = sum(asked(n) for n in range(HOLDS))

            async def delivered() -> bool:
                status = (await get(session, base + "/v1/status"))["usage"]
                return bool(status["backlog"] == 0 and await daemon.used(TENANT) == total)

            await eventually(delivered, within=30)
            status = (await get(session, base + "/v1/status"))["usage"]
            assert status["holds"]["active"] == 0
            assert await used() == total and await daemon.used(TENANT) == total
            unanswered_but_committed = sum(
                1 for n, (_, b) in enumerate(retried) if b["replayed"] and n not in before
            )
            print(f"{len(before)} of {HOLDS} settles answered before the kill, "
                  f"{unanswered_but_committed} committed but cut off before their answer")  # fmt: skip
    finally:
        process.kill()
        process.wait(timeout=10)
