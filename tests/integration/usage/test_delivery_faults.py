"""Usage delivery never wedges: byte-bounded batches, splitting on 413, quarantine, re-delivery."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tests.integration.usage.conftest import (
    SidecarClient,
    SidecarFactory,
    events,
    eventually,
    settled,
    start_daemon,
    usage_status,
    used,
)
from tiergate.cli import main


def padded(tenant: str, n: int, pad: int, prefix: str) -> list[dict[str, Any]]:
    """`n` events whose properties carry `pad` bytes of text (a label, a request path...)."""
    return [{**e, "properties": {"note": "x" * pad}} for e in events(tenant, n, prefix=prefix)]


async def metric(client: SidecarClient, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not exported"
    return float(found.group(1))


async def test_a_backlog_larger_than_the_daemon_body_limit_drains(
    tmp_path: Path, make_sidecar: SidecarFactory, unused_tcp_port: int
) -> None:
    """500 events of ~2.5 KB gathered during an outage once made one 1.28 MB batch: 413 forever."""
    first = await start_daemon(tmp_path, unused_tcp_port)
    sidecar = await make_sidecar(first.url)
    await first.server.close()
    for i in range(5):
        batch = padded("t_big", 100, 2400, prefix=f"b{i}")
        assert (await sidecar.post("/v1/usage/batch", json={"events": batch})).status == 202

    async def waiting() -> bool:
        return bool((await usage_status(sidecar))["delivery"]["failures"] > 0)

    await eventually(waiting)
    assert await metric(sidecar, "tiergate_usage_backlog") == 500
    assert await metric(sidecar, "tiergate_usage_oldest_undelivered_seconds") > 0
    back = await start_daemon(tmp_path, unused_tcp_port)  # its body limit: the default 1 MiB
    try:

        async def drained() -> bool:
            return await back.used("t_big") == 500

        await eventually(drained)
        await eventually(lambda: settled(sidecar))
        status = await usage_status(sidecar)
        assert status["quarantined"] == 0 and status["delivery"]["delivered"] == 500
        assert status["delivery"]["batches"] >= 3  # 1.2 MB in batches of at most 512 KiB
        assert await metric(sidecar, "tiergate_usage_oldest_undelivered_seconds") == 0
    finally:
        await back.server.close()


async def test_an_event_no_batch_can_carry_is_quarantined_then_redelivered(
    tmp_path: Path, make_sidecar: SidecarFactory, unused_tcp_port: int
) -> None:
    """A daemon whose body limit is below one accepted event: split down to it, set it aside,
    deliver everything else, and deliver it once the operator has fixed the limit."""
    strict = await start_daemon(tmp_path, unused_tcp_port, max_body_bytes=2048)
    sidecar = await make_sidecar(strict.url)
    try:
        small = events("t_q", 40, prefix="s")
        big = padded("t_q", 1, 3000, prefix="big")
        batch = [*small[:20], *big, *small[20:]]
        assert (await sidecar.post("/v1/usage/batch", json={"events": batch})).status == 202
        assert await used(sidecar, "t_q") == 41

        async def set_aside() -> bool:
            return (await usage_status(sidecar))["quarantined"] == 1 and await strict.used("t_q") == 40

        await eventually(set_aside)
        await eventually(lambda: settled(sidecar))
        status = await usage_status(sidecar)
        assert status["backlog"] == 0 and status["delivery"]["splits"] >= 1
        assert "413" in status["delivery"]["last_error"]
        assert await used(sidecar, "t_q") == 40  # quarantined usage is not counted
        assert await metric(sidecar, "tiergate_usage_quarantined") == 1
        listed = await asyncio.to_thread(
            CliRunner().invoke, main, ["usage", "quarantine", "--url", _url(sidecar)]
        )
        assert listed.exit_code == 0, listed.output
        assert "big-0" in listed.output and "413" in listed.output
    finally:
        await strict.server.close()
    relaxed = await start_daemon(tmp_path, unused_tcp_port)  # the operator raised the limit
    try:
        redone = await asyncio.to_thread(
            CliRunner().invoke, main, ["usage", "redeliver", "--all", "--url", _url(sidecar)]
        )
        assert redone.exit_code == 0 and "1 events back in line" in redone.output, redone.output

        async def delivered() -> bool:
            return await relaxed.used("t_q") == 41

        await eventually(delivered)
        await eventually(lambda: settled(sidecar))
        assert (await usage_status(sidecar))["quarantined"] == 0 and await used(sidecar, "t_q") == 41
    finally:
        await relaxed.server.close()


async def test_redeliver_names_what_it_needs(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    for body in ({}, {"ids": [1], "all": True}, {"ids": ["x"]}, {"all": "yes"}):
        response = await sidecar.post("/v1/usage/quarantine/redeliver", json=body)
        assert response.status == 400, body
        assert (await response.json())["error"]["field"] in {"ids", "ids[0]", "all"}
    answer = await sidecar.post("/v1/usage/quarantine/redeliver", json={"ids": [7]})
    assert answer.status == 200 and await answer.json() == {"redelivered": 0, "quarantined": 0}
    assert (await sidecar.get("/v1/usage/quarantine?limit=0")).status == 400


def _url(client: SidecarClient) -> str:
    return str(client.make_url("")).rstrip("/")
