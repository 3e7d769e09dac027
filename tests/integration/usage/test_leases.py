"""Quota leases across pods (issue 25, docs/adr/0045): 4 real sidecar processes follow real daemons
on loopback, and 1,000 concurrent reserves against a limit of 100 allow exactly 100.

Without leases (`enforcement: local`) the same load allows 250 to 285: each pod decides from its
own view until the others' usage reaches it through the daemon.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import postgres_server
from tests.conftest import MirrorBackend
from tests.integration.daemon.conftest import AUTH, FEED_TOKEN
from tests.integration.usage.conftest import ROOT, DaemonServer, eventually, start_daemon

TIERGATE = Path(sys.executable).with_name("tiergate")
LIMIT = 100
RESERVES = 1000
SIDECARS = 4


def leased_catalog(tmp_path: Path, enforcement: str = "leased") -> Path:
    """plans.yaml with `exports` leased and the free tier's exports limit at 100."""
    text = (ROOT / "plans" / "plans.yaml").read_text(encoding="utf-8")
    metric = "exports: {aggregation: count, alerts: [0.8, 1.0]}"
    assert metric in text and "exports: {limit: 10}\n" in text
    text = text.replace(metric, f"exports: {{aggregation: count, enforcement: {enforcement}}}")
    text = text.replace("exports: {limit: 10}\n", f"exports: {{limit: {LIMIT}}}\n", 1)
    path = tmp_path / "plans-leased.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sidecar:
    url: str
    process: subprocess.Popen[bytes]
    home: Path
    daemon_url: str
    plans: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_sidecar(home: Path, daemon_url: str, plans: Path) -> Sidecar:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")},
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_REPLICA_PATH": str(home / "replica.db"),
        "TIERGATE_PLANS": str(plans),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_DAEMON_URL": daemon_url,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_DELIVERY_BACKOFF_MAX_S": "0.2",
        "TIERGATE_DECISION_LOG_SAMPLE": "0",
        "TIERGATE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [str(TIERGATE), "sidecar"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Sidecar(f"http://127.0.0.1:{port}", process, home, daemon_url, plans)


async def ready(session: aiohttp.ClientSession, sidecar: Sidecar) -> bool:
    try:
        async with session.get(sidecar.url + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@asynccontextmanager
async def sidecars_following(
    tmp_path: Path, daemon_urls: list[str], plans: Path
) -> AsyncIterator[list[Sidecar]]:
    started = [
        start_sidecar(tmp_path / f"sidecar{n}", daemon_urls[n % len(daemon_urls)], plans)
        for n in range(SIDECARS)
    ]
    try:
        yield started
    finally:
        await asyncio.gather(*(stop(sidecar) for sidecar in started))


async def stop(sidecar: Sidecar) -> None:
    """SIGTERM, waited for off the loop: an in-process daemon answers the leases given back."""
    if sidecar.process.poll() is None:
        sidecar.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(sidecar.process.wait, 15)
    except subprocess.TimeoutExpired:
        sidecar.kill()


@asynccontextmanager
async def daemons(
    tmp_path: Path, backend: MirrorBackend | None, count: int, plans: Path, **overrides: Any
) -> AsyncIterator[list[DaemonServer]]:
    started = []
    for n in range(count):
        home = tmp_path / f"daemon{n}"
        home.mkdir()
        started.append(await start_daemon(home, backend=backend, plans=plans, **overrides))
    try:
        yield started
    finally:
        for daemon in started:
            await daemon.server.close()


async def reserve(session: aiohttp.ClientSession, sidecar: Sidecar, tenant: str, tid: str) -> dict[str, Any]:
    body = {"tenant": tenant, "feature": "exports", "reserve": True, "transaction_id": tid}
    async with session.post(sidecar.url + "/v1/check", json=body) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def burst(session: aiohttp.ClientSession, sidecars: list[Sidecar], tenant: str) -> list[dict[str, Any]]:
    """RESERVES concurrent reserves with unique transaction ids, spread evenly over the sidecars."""
    return await asyncio.gather(
        *(reserve(session, sidecars[n % len(sidecars)], tenant, f"{tenant}-{n}") for n in range(RESERVES))
    )


def allowed(answers: list[dict[str, Any]]) -> int:
    return sum(bool(a["reservation"]["reserved"]) for a in answers)


async def counted(daemon: DaemonServer, tenant: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.url}/v1/usage/{tenant}", headers=AUTH) as response,
    ):
        body = await response.json()
        return int(body["usage"].get("exports", 0))


async def all_ready(session: aiohttp.ClientSession, sidecars: list[Sidecar]) -> None:
    for sidecar in sidecars:
        await eventually(lambda s=sidecar: ready(session, s), within=60)  # type: ignore[misc]


@pytest.mark.slow
async def test_four_sidecars_allow_exactly_the_limit(tmp_path: Path) -> None:
    """One daemon (SQLite), 4 sidecars: exactly 100 of 1,000 in each of 5 runs (bench/leases.py runs 20)."""
    plans = leased_catalog(tmp_path)
    async with (
        daemons(tmp_path, None, 1, plans) as (daemon,),
        sidecars_following(tmp_path, [daemon.url], plans) as sidecars,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session,
    ):
        await all_ready(session, sidecars)
        for run in range(5):
            tenant = f"t_lease_{run}"
            answers = await burst(session, sidecars, tenant)
            reasons = Counter(a["reason"] for a in answers if not a["allow"])
            assert allowed(answers) == LIMIT, reasons
            assert set(reasons) <= {"quota_unavailable", "limit_exceeded"}
            await eventually(lambda t=tenant: _equals(counted(daemon, t), LIMIT))  # type: ignore[misc]


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


@pytest.mark.slow
async def test_two_daemons_on_postgresql_agree(tmp_path: Path, postgres_url: str) -> None:
    """Two daemons sharing a PostgreSQL mirror, 2 sidecars on each: exactly 100, 5 runs."""
    postgres_server.empty_mirror(postgres_url)
    backend = MirrorBackend("postgresql", tmp_path / "mirror.db", postgres_url)
    plans = leased_catalog(tmp_path)
    async with (
        daemons(tmp_path, backend, 2, plans) as pair,
        sidecars_following(tmp_path, [d.url for d in pair], plans) as sidecars,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session,
    ):
        await all_ready(session, sidecars)
        for run in range(5):
            tenant = f"t_pg_lease_{run}"
            answers = await burst(session, sidecars, tenant)
            assert allowed(answers) == LIMIT, Counter(a["reason"] for a in answers)
            await eventually(lambda t=tenant: _equals(counted(pair[0], t), LIMIT))  # type: ignore[misc]


async def reserve_or_lost(
    session: aiohttp.ClientSession, sidecar: Sidecar, tenant: str, tid: str
) -> dict[str, Any] | None:
    """None: the sidecar died before answering (the reserve may or may not have been recorded)."""
    try:
        return await reserve(session, sidecar, tenant, tid)
    except (aiohttp.ClientError, AssertionError):
        return None


@pytest.mark.slow
async def test_a_sidecar_killed_mid_run_never_overshoots_and_its_units_come_back(tmp_path: Path) -> None:
    plans = leased_catalog(tmp_path)
    ttl_s = 4.0
    async with (
        daemons(tmp_path, None, 1, plans, lease_ttl_s=ttl_s) as (daemon,),
        sidecars_following(tmp_path, [daemon.url], plans) as sidecars,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session,
    ):
        await all_ready(session, sidecars)
        tenant = "t_lease_k9"
        victim = sidecars[0]
        calls = [
            reserve_or_lost(session, sidecars[n % SIDECARS], tenant, f"{tenant}-{n}") for n in range(RESERVES)
        ]
        running = asyncio.gather(*calls)
        await eventually(lambda: _leases_held(daemon, tenant), within=10)
        victim.kill()
        first = [a for a in await running if a is not None]
        assert allowed(first) <= LIMIT
        # The pod comes back on its volume: its outbox delivers what it recorded.
        sidecars[0] = start_sidecar(victim.home, victim.daemon_url, victim.plans)
        await all_ready(session, sidecars)
        await asyncio.sleep(ttl_s)  # the killed holder's lease expires; its units are free again
        second = await asyncio.gather(
            *(reserve(session, sidecars[n % SIDECARS], tenant, f"{tenant}-again-{n}") for n in range(200))
        )
        assert allowed(first) + allowed(second) <= LIMIT
        await eventually(lambda: _equals(counted(daemon, tenant), LIMIT))
        await asyncio.sleep(0.5)
        assert await counted(daemon, tenant) == LIMIT  # and stays there: nothing counted twice


async def _leases_held(daemon: DaemonServer, tenant: str) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.url}/v1/leases/{tenant}", headers=AUTH) as response,
    ):
        return bool((await response.json())["leases"])


async def lease_units(session: aiohttp.ClientSession, sidecar: Sidecar) -> int:
    async with session.get(sidecar.url + "/v1/status") as response:
        body = await response.json()
        return int(body["usage"]["leases"]["units"])


@pytest.mark.slow
async def test_with_the_daemon_stopped_sidecars_spend_only_what_they_hold(tmp_path: Path) -> None:
    plans = leased_catalog(tmp_path)
    port = free_port()
    (tmp_path / "daemon").mkdir()
    daemon = await start_daemon(tmp_path / "daemon", port=port, plans=plans)
    async with (
        sidecars_following(tmp_path, [daemon.url], plans) as sidecars,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session,
    ):
        await all_ready(session, sidecars)
        tenant = "t_lease_outage"
        # A steady trickle on every sidecar: each holds a slice sized by its rate.
        warm = []
        for n in range(40):
            warm.append(await reserve(session, sidecars[n % SIDECARS], tenant, f"{tenant}-warm-{n}"))
        await daemon.server.close()  # then no refill can land: what each holds is fixed
        held = [await lease_units(session, sidecar) for sidecar in sidecars]
        assert all(units > 0 for units in held)  # each holds a slice sized by its recent rate
        during = await asyncio.gather(
            *(reserve(session, sidecars[n % SIDECARS], tenant, f"{tenant}-{n}") for n in range(RESERVES))
        )
        for n in range(SIDECARS):
            mine = [a for i, a in enumerate(during) if i % SIDECARS == n]
            assert allowed(mine) <= held[n]
        assert allowed(during) == sum(held)  # they spend what they hold, and nothing more
        reasons = {a["reason"] for a in during if not a["allow"]}
        assert reasons <= {"quota_unavailable"}
        assert allowed(warm) + allowed(during) <= LIMIT
        status = await (await session.get(sidecars[0].url + "/v1/status")).json()
        assert status["usage"]["leases"]["refill_failures"] >= 1  # the outage is visible
        metrics = await (await session.get(sidecars[0].url + "/metrics")).text()
        assert "tiergate_lease_quota_unavailable_total" in metrics
        restarted = await start_daemon(tmp_path / "daemon", port=port, plans=plans)
        try:
            total = allowed(warm) + allowed(during)
            await eventually(lambda: _equals(counted(restarted, tenant), total))
        finally:
            await restarted.server.close()


@pytest.mark.slow
async def test_a_sidecar_shut_down_gives_its_slice_back(tmp_path: Path) -> None:
    plans = leased_catalog(tmp_path)
    async with daemons(tmp_path, None, 1, plans) as (daemon,):
        sidecar = start_sidecar(tmp_path / "sidecar", daemon.url, plans)
        try:
            async with aiohttp.ClientSession() as session:
                await all_ready(session, [sidecar])
                tenant = "t_lease_release"
                for n in range(3):
                    assert (await reserve(session, sidecar, tenant, f"{tenant}-{n}"))["allow"]
                assert await lease_units(session, sidecar) > 0  # it holds more than it spent

                async def all_acknowledged() -> bool:
                    async with session.get(sidecar.url + "/v1/status") as response:
                        return bool((await response.json())["usage"]["leases"]["awaiting_ack"] == 0)

                await eventually(all_acknowledged)
                sidecar.process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(sidecar.process.wait, 15)  # the daemon answers meanwhile
                await eventually(lambda: _no_leases(daemon, tenant), within=5)
        finally:
            if sidecar.process.poll() is None:
                sidecar.kill()


async def _no_leases(daemon: DaemonServer, tenant: str) -> bool:
    return not await _leases_held(daemon, tenant)
