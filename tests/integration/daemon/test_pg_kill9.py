"""Two daemon processes on one PostgreSQL, one of them kill -9'd: the sinks hand over to the new
leader without losing or repeating a transaction id at Lago, and a webhook storm whose failed
deliveries are retried against the survivor ends, on a sidecar following the survivor, in
Stripe's state."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.processes import Process, free_port, tiergate_command
from tests import postgres_server
from tests.integration.daemon.conftest import AUTH, FEED_TOKEN, ROOT, pg_daemon_process
from tests.integration.usage.conftest import eventually
from tests.integration.usage.test_lago_contract import lago_event
from tests.lago_double import API_KEY, LagoDouble, start_lago
from tests.stripe_payloads import signed, subscription_event

# Stripe's `created` of the storm's events: recent (an event dated ahead of the clock is refused).
RECENT = int(time.time()) - 3600
BATCH = 10
EVENTS = 400
CHECK_S = 0.2  # leader election period: a hand-over within a few of these after the kill


@dataclass
class Daemon:
    process: Process
    url: str

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.url + "/v1/status", headers=AUTH) as response:
            body: dict[str, Any] = await response.json()
            return body

    async def leads(self, session: aiohttp.ClientSession) -> bool:
        try:
            return bool((await self.status(session))["leader"]["is_leader"])
        except aiohttp.ClientError:
            return False


def _daemon(tmp_path: Path, name: str, pg: str, extra: dict[str, str]) -> Daemon:
    return Daemon(*pg_daemon_process(tmp_path, name, pg, TIERGATE_LEADER_CHECK_S=str(CHECK_S), **extra))


@pytest.fixture
def pg(postgres_url: str) -> str:
    postgres_server.reset(postgres_url)
    return postgres_url


@pytest.fixture
def session_processes() -> Iterator[list[Process]]:
    """Every process a test starts, stopped at its end (whatever happened)."""
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


async def _start(daemons: list[Daemon], started: list[Process]) -> None:
    for daemon in daemons:
        started.append(daemon.process)
        daemon.process.start()
    for daemon in daemons:
        await asyncio.to_thread(daemon.process.wait_http, daemon.url + "/readyz", lambda s: s == 200, 60)


async def _leader_of(session: aiohttp.ClientSession, daemons: list[Daemon]) -> tuple[Daemon, Daemon]:
    """(leader, the other) once exactly one daemon leads."""
    found: list[Daemon] = []

    async def one_leads() -> bool:
        found[:] = [d for d in daemons if await d.leads(session)]
        return len(found) == 1

    await eventually(one_leads, within=30)
    leader = found[0]
    return leader, next(d for d in daemons if d is not leader)


@pytest.fixture
async def lago() -> AsyncIterator[tuple[LagoDouble, str]]:
    double = LagoDouble(delay_s=0.03)
    server = await start_lago(double)
    yield double, str(server.make_url("")).rstrip("/")
    await server.close()


# -- the sinks run on the leader only -------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_of_the_leader_mid_delivery_hands_the_sink_over(
    tmp_path: Path, pg: str, lago: tuple[LagoDouble, str], session_processes: list[Process]
) -> None:
    double, lago_url = lago
    sink = {
        "TIERGATE_LAGO_API_URL": lago_url,
        "TIERGATE_LAGO_API_KEY": API_KEY,
        "TIERGATE_LAGO_BATCH_SIZE": str(BATCH),  # many small calls: the kill lands mid-way
        "TIERGATE_SINK_POLL_S": "0.05",
        "TIERGATE_SINK_BACKOFF_MAX_S": "0.2",
    }
    daemons = [_daemon(tmp_path, name, pg, sink) for name in ("a", "b")]
    await _start(daemons, session_processes)
    sent = [{**lago_event(f"kill-{i}", gb=1), "tiergate_tenant": "t_kill"} for i in range(EVENTS)]
    async with aiohttp.ClientSession() as session:
        leader, other = await _leader_of(session, daemons)
        for index, daemon in enumerate(daemons):  # usage arrives at both daemons
            half = {"events": sent[index::2]}
            async with session.post(daemon.url + "/v1/usage/batch", json=half, headers=AUTH) as response:
                assert response.status == 200 and (await response.json())["ingested"] == EVENTS // 2

        async def some_delivered() -> bool:
            return len(double.accepted) >= 5 * BATCH

        await eventually(some_delivered, within=60)
        standby = (await other.status(session))["sinks"]["lago"]
        assert standby["role"].startswith("standby") and standby["delivered"] == 0  # one sender
        await asyncio.to_thread(leader.process.kill)
        at_kill = len(double.accepted)
        assert at_kill < EVENTS, "the sink caught up before the kill: nothing was tested"

        async def all_delivered() -> bool:
            return len(double.accepted) >= EVENTS

        await eventually(all_delivered, within=90)
        took_over = (await other.status(session))["sinks"]["lago"]
        assert (await other.status(session))["leader"]["is_leader"]
    assert took_over["role"].startswith("sending") and took_over["delivered"] > 0
    # Every transaction id reached Lago exactly once (at least once on the wire: the batch in
    # flight at the kill may be sent again, and Lago answers value_already_exist for it).
    assert sorted(double.accepted) == sorted(e["transaction_id"] for e in sent)
    assert double.already_there <= BATCH


# -- a webhook storm across two daemons, one killed -----------------------------------------

UPDATED = "customer.subscription.updated.upgrade"
TENANTS = 8
VERSIONS = 10  # events per tenant; the newest (created) decides
LOOKUP_KEYS = ("starter_month", "pro_month")


@dataclass(frozen=True)
class Delivery:
    body: str
    headers: dict[str, str]
    genuine: bool


def _expected(tenant_index: int) -> tuple[str, int]:
    """A tenant's tier and quantity after its newest event."""
    return LOOKUP_KEYS[(tenant_index + VERSIONS) % 2].split("_")[0], VERSIONS


def _storm(rng: random.Random) -> list[Delivery]:
    """Every event twice (Stripe may deliver twice), a tampered copy of each, shuffled."""
    deliveries: list[Delivery] = []
    for t in range(TENANTS):
        for n in range(1, VERSIONS + 1):
            event = subscription_event(
                UPDATED,
                event_id=f"evt_kill_{t}_{n}",
                created=RECENT + n,
                tenant=f"t_kill{t}",
                quantity=n,
                lookup_key=LOOKUP_KEYS[(t + n) % 2],
            )
            raw, headers = signed(event)
            deliveries += [Delivery(raw, headers, True)] * 2
            tampered = raw.replace(f'"quantity": {n}', '"quantity": 999')
            assert tampered != raw
            deliveries.append(Delivery(tampered, headers, False))
    rng.shuffle(deliveries)
    return deliveries


async def _deliver(session: aiohttp.ClientSession, url: str, delivery: Delivery) -> int | None:
    """The status, or None when the daemon gave no answer (killed, refused, reset)."""
    try:
        async with session.post(url + "/webhooks/stripe", data=delivery.body, headers=delivery.headers) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def _sidecar(tmp_path: Path, daemon: Daemon) -> tuple[Process, str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")},
        "TIERGATE_DAEMON_URL": daemon.url,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_REPLICA_PATH": str(tmp_path / "replica.db"),
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_LOG_LEVEL": "warning",
    }
    return Process("sidecar", tiergate_command("sidecar"), env, tmp_path / "sidecar.log", ROOT), (
        f"http://127.0.0.1:{port}"
    )


@pytest.mark.slow
async def test_a_storm_split_across_two_daemons_survives_a_kill_9(
    tmp_path: Path, pg: str, session_processes: list[Process]
) -> None:
    daemons = [_daemon(tmp_path, name, pg, {}) for name in ("a", "b")]
    await _start(daemons, session_processes)
    victim, survivor = daemons
    sidecar, sidecar_url = _sidecar(tmp_path, survivor)
    session_processes.append(sidecar)
    sidecar.start()
    await asyncio.to_thread(sidecar.wait_http, sidecar_url + "/readyz", lambda s: s == 200, 60)
    storm = _storm(random.Random(12))
    kill_at = len(storm) // 3
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        gate = asyncio.Semaphore(8)  # eight deliveries in flight, as Stripe's parallel senders

        async def send(index: int, delivery: Delivery) -> tuple[Delivery, int | None]:
            async with gate:
                if index == kill_at:
                    await asyncio.to_thread(victim.process.kill)  # mid-storm, deliveries in flight
                return delivery, await _deliver(session, daemons[index % 2].url, delivery)

        first = await asyncio.gather(*(send(i, d) for i, d in enumerate(storm)))
        failed = [d for d, status in first if status is None or status >= 500]
        assert failed, "no delivery failed: the kill landed after the storm"
        # Stripe retries what got no 2xx; the Service now routes to the survivor only.
        retried = [(d, await _deliver(session, survivor.url, d)) for d in failed]
        outcomes = [(d, s) for d, s in first if s is not None and s < 500] + retried
        assert {s for d, s in outcomes if d.genuine} == {200}
        assert {s for d, s in outcomes if not d.genuine} == {400}

        async def sidecar_converged() -> bool:
            for t in range(TENANTS):
                async with session.get(f"{sidecar_url}/v1/entitlements/t_kill{t}") as response:
                    account = (await response.json())["account"]
                if account is None or (account["tier"], account["quantity"]) != _expected(t):
                    return False
            return True

        await eventually(sidecar_converged, within=30)
        async with session.get(survivor.url + "/v1/feed/snapshot", headers=AUTH) as response:
            lines = [line for line in (await response.text()).splitlines() if '"account"' in line]
        assert len(lines) == TENANTS  # nothing lost, nothing extra
