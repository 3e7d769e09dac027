"""Two daemon processes on one PostgreSQL debiting credits from usage; one is kill -9'd mid-way and
its unanswered batches are sent again to the other (as a sidecar's outbox retries): every event is
debited exactly once, and the balance is what the ledger's entries add up to."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import postgres_server
from tests.integration.credits.conftest import API_TOKEN, PLANS
from tests.integration.daemon.conftest import AUTH, pg_daemon_process
from tests.integration.usage.conftest import eventually

WAIT_S = 60.0  # a bound for a loaded machine, not a measured time
TENANTS = 4
GRANT = 100_000
API = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def pg(postgres_url: str) -> str:
    postgres_server.reset(postgres_url)
    return postgres_url


def _batches(n: int, size: int) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    events = [
        {"transaction_id": f"img-{i}", "external_customer_id": f"t_{i % TENANTS}", "code": "images"}
        for i in range(n)
    ]
    rng = random.Random(24)
    batches = [events[i : i + size] for i in range(0, n, size)]
    replays = rng.sample(events, n // 10)
    batches += [replays[i : i + size] for i in range(0, len(replays), size)]
    rng.shuffle(batches)
    return events, batches


@pytest.mark.slow
async def test_kill_9_mid_ingest_debits_each_event_once(pg: str, tmp_path: Path) -> None:
    env = {"TIERGATE_PLANS": str(PLANS), "TIERGATE_API_TOKEN": API_TOKEN}
    (victim, victim_url), (survivor, survivor_url) = (
        pg_daemon_process(tmp_path, n, pg, **env) for n in ("a", "b")
    )
    events, batches = _batches(2000, 40)
    unanswered: list[list[dict[str, Any]]] = []
    answered = 0
    try:
        for process, url in ((victim, victim_url), (survivor, survivor_url)):
            process.start()
            await asyncio.to_thread(process.wait_http, url + "/readyz", lambda s: s == 200, 60)
        async with aiohttp.ClientSession() as session:
            for t in range(TENANTS):
                body = {"credit_type": "ai_credits", "amount": GRANT, "reason": "kill test"}
                async with session.post(
                    f"{survivor_url}/v1/tenants/t_{t}/credits/grants", json=body, headers=API
                ) as r:
                    assert r.status == 201
            pending = iter(batches)

            async def deliver() -> None:
                nonlocal answered
                for batch in pending:
                    try:
                        async with session.post(
                            victim_url + "/v1/usage/batch", json={"events": batch}, headers=AUTH
                        ) as r:
                            assert r.status == 200
                            answered += 1
                    except aiohttp.ClientError:
                        unanswered.append(batch)

            async def kill_a_third_of_the_way() -> None:
                async def a_third() -> bool:
                    return answered >= len(batches) // 3

                await eventually(a_third, within=WAIT_S)
                await asyncio.to_thread(victim.kill)

            await asyncio.gather(kill_a_third_of_the_way(), *(deliver() for _ in range(4)))
            assert unanswered, "every batch was answered before the kill: nothing was tested"
            for batch in unanswered:
                async with session.post(
                    survivor_url + "/v1/usage/batch", json={"events": batch}, headers=AUTH
                ) as r:
                    assert r.status == 200
            for t in range(TENANTS):
                used = sum(1 for e in events if e["external_customer_id"] == f"t_{t}")
                async with session.get(f"{survivor_url}/v1/tenants/t_{t}/credits", headers=API) as r:
                    state = (await r.json())["credits"][0]
                assert state["balance"] == GRANT - 2 * used  # images cost 2 credits each on free
                entries: list[dict[str, Any]] = []
                after = 0
                while True:
                    async with session.get(
                        f"{survivor_url}/v1/tenants/t_{t}/credits/ledger?after={after}&limit=1000",
                        headers=API,
                    ) as r:
                        page = await r.json()
                    entries += page["entries"]
                    if page["next_after"] is None:
                        break
                    after = page["next_after"]
                debits = [e for e in entries if e["kind"] == "debit"]
                assert len(debits) == used and len({e["transaction_id"] for e in debits}) == used
                assert sum(e["amount"] for e in entries) == state["balance"]
    finally:
        victim.stop()
        survivor.stop()
