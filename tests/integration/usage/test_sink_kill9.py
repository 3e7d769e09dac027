"""kill -9 of the daemon while the Lago sink is behind: nothing lost, nothing duplicated at Lago."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from demo.processes import Process, free_port, tiergate_command
from tests.integration.daemon.conftest import AUTH, FEED_TOKEN
from tests.integration.usage.conftest import ROOT, eventually
from tests.integration.usage.test_lago_contract import lago_event
from tests.lago_double import API_KEY, LagoDouble, start_lago
from tests.stripe_payloads import SECRET

BATCH = 10
EVENTS = 400


def daemon_process(tmp_path: Path, port: int, lago_url: str) -> Process:
    env = {
        **os.environ,
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_MIRROR_PATH": str(tmp_path / "mirror.db"),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_STRIPE_API_KEY": "sk_test_kill",
        "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",  # never called: no reconcile at start
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_LAGO_API_URL": lago_url,
        "TIERGATE_LAGO_API_KEY": API_KEY,
        "TIERGATE_LAGO_BATCH_SIZE": str(BATCH),  # many small calls: the kill lands mid-way
        "TIERGATE_SINK_POLL_S": "0.05",
        "TIERGATE_SINK_BACKOFF_MAX_S": "0.2",
        "TIERGATE_LOG_LEVEL": "warning",
    }
    return Process("daemon", tiergate_command("sync-daemon"), env, tmp_path / "daemon.log", ROOT)


@pytest.mark.slow
async def test_kill_9_while_the_sink_is_behind(tmp_path: Path) -> None:
    double = LagoDouble(delay_s=0.03)
    lago = await start_lago(double)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = daemon_process(tmp_path, port, str(lago.make_url("")).rstrip("/"))
    try:
        daemon.start()
        await asyncio.to_thread(daemon.wait_http, base + "/readyz", lambda s: s == 200)
        sent = [{**lago_event(f"kill-{i}", gb=1), "tiergate_tenant": "t_kill"} for i in range(EVENTS)]
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/v1/usage/batch", json={"events": sent}, headers=AUTH) as response,
        ):
            assert response.status == 200 and (await response.json())["ingested"] == EVENTS

        async def some_delivered() -> bool:
            return len(double.accepted) >= 5 * BATCH

        await eventually(some_delivered)
        await asyncio.to_thread(daemon.kill)
        at_kill = len(double.accepted)
        assert at_kill < EVENTS, "the sink caught up before the kill: nothing was tested"

        daemon.start()

        async def all_delivered() -> bool:
            return len(double.accepted) >= EVENTS

        await eventually(all_delivered, within=60)
        assert sorted(double.accepted) == sorted(e["transaction_id"] for e in sent)  # none lost, none twice
        # The cursor was durable: at most the batch in flight at the kill went out again.
        assert double.already_there <= BATCH
    finally:
        await asyncio.to_thread(daemon.stop)
        await lago.close()
