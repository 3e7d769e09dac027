"""Usage ingest on PostgreSQL without a batch-long lock (ADR 21), on the real server: ingests on two
daemons at once count exactly and the sink sends every event once; a sink reading while ingests
commit out of order never skips one; kill -9 of a daemon mid-ingest loses nothing and counts
nothing twice."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests import postgres_server
from tests.integration.daemon.conftest import AUTH, make_settings, pg_daemon_process
from tests.integration.usage.conftest import eventually
from tests.integration.usage.test_lago_contract import lago_event
from tests.lago_double import API_KEY, LagoDouble, start_lago
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.mirror.postgres import PostgresMirror
from tiergate.sync_daemon.mirror.store import MirrorTxn
from tiergate.sync_daemon.mirror.usage import ingest_events
from tiergate.sync_daemon.sinks.runner import SinkMetrics, SinkRunner
from tiergate.sync_daemon.sinks.store import SinkEvent
from tiergate.usage_events import ValidEvent

TENANTS = 5
WAIT_S = 60.0  # a bound for a loaded machine, not a measured time


@pytest.fixture
def pg(postgres_url: str) -> str:
    postgres_server.reset(postgres_url)
    return postgres_url


def _events(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{**lago_event(f"{prefix}-{i}", gb=1), "tiergate_tenant": f"t_in{i % TENANTS}"} for i in range(n)]


def _with_replays(events: list[dict[str, Any]], size: int, seed: int) -> list[list[dict[str, Any]]]:
    """Batches of `size`, plus 10 % of the events again in batches of their own."""
    replays = random.Random(seed).sample(events, len(events) // 10)
    batches = [events[i : i + size] for i in range(0, len(events), size)]
    batches += [replays[i : i + size] for i in range(0, len(replays), size)]
    random.Random(seed + 1).shuffle(batches)
    return batches


def _expected(events: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(e["tiergate_tenant"] for e in events))


async def _usage(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for t in range(TENANTS):
        async with session.get(f"{url}/v1/usage/t_in{t}", headers=AUTH) as response:
            assert response.status == 200
            found[f"t_in{t}"] = int((await response.json())["usage"].get("storage_gb", 0))
    return found


async def _listed(session: aiohttp.ClientSession, url: str) -> list[tuple[int, str]]:
    """Every stored event through GET /v1/usage/events, page by page: (seq, transaction id)."""
    listed: list[tuple[int, str]] = []
    query = "limit=100"
    while True:
        async with session.get(f"{url}/v1/usage/events?{query}", headers=AUTH) as response:
            assert response.status == 200
            page = await response.json()
        listed += [(e["seq"], e["transaction_id"]) for e in page["events"]]
        if page["next_cursor"] is None:
            return listed
        query = f"limit=100&cursor={page['next_cursor']}"


# -- two daemons ingesting at once, one sink --------------------------------------------------


@pytest.fixture
async def lago() -> AsyncIterator[tuple[LagoDouble, str]]:
    double = LagoDouble()
    server = await start_lago(double)
    yield double, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def two_daemons(pg: str, tmp_path: Path, lago: tuple[LagoDouble, str]) -> AsyncIterator[list[str]]:
    servers = []
    for name in ("a", "b"):
        settings = make_settings(
            tmp_path / f"{name}.db",
            "http://127.0.0.1:9",
            mirror_url=SecretStr(pg),
            stripe_refetch=False,
            lago_api_url=lago[1],
            lago_api_key=SecretStr(API_KEY),
            lago_batch_size=50,
            sink_poll_s=0.05,
            sink_backoff_max_s=0.1,
        )
        server = TestServer(create_app(settings), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
    yield [str(s.make_url("")).rstrip("/") for s in servers]
    for server in servers:
        await server.close()


async def test_two_daemons_ingesting_at_once_with_replays_count_exactly_and_the_sink_sends_each_once(
    two_daemons: list[str], lago: tuple[LagoDouble, str]
) -> None:
    double, _ = lago
    events = _events("two", 600)
    batches = _with_replays(events, 25, seed=21)
    answers: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:

        async def send(index: int, batch: list[dict[str, Any]]) -> None:
            # Each batch goes to both daemons at once: every event arrives at least twice.
            for url in (two_daemons[index % 2], two_daemons[(index + 1) % 2]):
                async with session.post(url + "/v1/usage/batch", json={"events": batch}, headers=AUTH) as r:
                    assert r.status == 200
                    body = await r.json()
                    answers.update({s: body[s] for s in ("ingested", "duplicate", "rejected")})

        await asyncio.gather(*(send(i, b) for i, b in enumerate(batches)))
        assert answers["ingested"] == len(events) and answers["rejected"] == 0  # each id counted once
        for url in two_daemons:
            assert await _usage(session, url) == _expected(events)

        async def all_sent() -> bool:
            return len(double.accepted) >= len(events)

        await eventually(all_sent, within=WAIT_S)
        listed = await _listed(session, two_daemons[1])
    assert sorted(double.accepted) == sorted(e["transaction_id"] for e in events)  # once each
    assert double.already_there == 0  # nothing went out twice
    assert [seq for seq, _ in listed] == list(range(1, len(events) + 1))  # numbered without a gap


# -- a sink reading while ingests commit out of order -----------------------------------------


class RecordingSink:
    name = "recording"
    batch_size = 100

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, events: Sequence[SinkEvent]) -> dict[int, str]:
        self.sent += [str(e.document["transaction_id"]) for e in events]
        return {}


def _event(transaction_id: str) -> ValidEvent:
    # A tenant each: the two ingests share no counter row (that one they would wait for, rightly).
    return ValidEvent(
        tenant=f"t_{transaction_id}",
        transaction_id=transaction_id,
        code="api_calls",
        at=datetime.now(UTC),
        value=1,
    )


async def test_a_sink_never_skips_an_event_that_commits_after_a_later_one(pg: str) -> None:
    """A ingests first and commits last; B ingests and commits in between, while the sink reads."""
    mirror = PostgresMirror(pg, pool_size=4)
    await mirror.open()
    sink = RecordingSink()
    runner = SinkRunner(sink, mirror, SinkMetrics(CollectorRegistry()))
    stored, release = threading.Event(), threading.Event()

    def slow_ingest(txn: MirrorTxn) -> None:
        ingest_events(txn, [_event("first-in")], datetime.now(UTC))
        stored.set()
        assert release.wait(WAIT_S), "the test never released the first ingest"

    try:
        first = asyncio.ensure_future(mirror.transact(slow_ingest))
        assert await asyncio.to_thread(stored.wait, WAIT_S)
        # With a lock held for the whole ingest, this one would wait for the first: it must not.
        await asyncio.wait_for(
            mirror.transact(lambda txn: ingest_events(txn, [_event("second-in")], datetime.now(UTC))),
            WAIT_S,
        )
        assert await runner.step() and sink.sent == ["second-in"]
        assert not await runner.step()  # the uncommitted event is not there to pass
        release.set()
        await first
        assert await runner.step() and sink.sent == ["second-in", "first-in"]
        assert not await runner.step()
    finally:
        release.set()
        await mirror.close()


# -- kill -9 of a daemon mid-ingest ----------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_mid_ingest_loses_nothing_and_counts_nothing_twice(pg: str, tmp_path: Path) -> None:
    (victim, victim_url), (survivor, survivor_url) = (pg_daemon_process(tmp_path, n, pg) for n in ("a", "b"))
    events = _events("kill", 3000)
    batches = _with_replays(events, 50, seed=9)
    unanswered: list[list[dict[str, Any]]] = []
    answered = 0
    try:
        for process, url in ((victim, victim_url), (survivor, survivor_url)):
            process.start()
            await asyncio.to_thread(process.wait_http, url + "/readyz", lambda s: s == 200, 60)
        pending = iter(batches)
        async with aiohttp.ClientSession() as session:

            async def deliver() -> None:  # like a sidecar's delivery: an unanswered batch is kept
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
            for batch in unanswered:  # re-sent to the other daemon, as the sidecar retries
                async with session.post(
                    survivor_url + "/v1/usage/batch", json={"events": batch}, headers=AUTH
                ) as r:
                    assert r.status == 200
            assert await _usage(session, survivor_url) == _expected(events)
            listed = await _listed(session, survivor_url)
    finally:
        victim.stop()
        survivor.stop()
    assert sorted(tid for _, tid in listed) == sorted(e["transaction_id"] for e in events)
    assert [seq for seq, _ in listed] == list(range(1, len(events) + 1))
