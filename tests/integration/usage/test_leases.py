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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
        [str(TIERGATE), "sidecar"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Sidecar(f"http://127.0.0.1:{port}", process, home, daemon_url, plans)


async def ready(session: aiohttp.ClientSession, sidecar: Sidecar) -> bool:
    try:
        async with session.get(sidecar.url + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@contextmanager
def sidecars_following(tmp_path: Path, daemon_urls: list[str], plans: Path) -> Iterator[list[Sidecar]]:
    started = [
        start_sidecar(tmp_path / f"sidecar{n}", daemon_urls[n % len(daemon_urls)], plans)
        for n in range(SIDECARS)
    ]
    try:
        yield started
    finally:
        for sidecar in started:
            if sidecar.process.poll() is None:
                sidecar.process.send_signal(signal.SIGTERM)
        for sidecar in started:
            try:
                sidecar.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sidecar.process.kill()
                sidecar.process.wait(timeout=10)


@asynccontextmanager
async def daemons(
    tmp_path: Path, backend: MirrorBackend | None, count: int, plans: Path
) -> AsyncIterator[list[DaemonServer]]:
    started = []
    for n in range(count):
        home = tmp_path / f"daemon{n}"
        home.mkdir()
        started.append(
            await start_daemon(home if backend is None else tmp_path, backend=backend, plans=plans)
        )
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
    async with daemons(tmp_path, None, 1, plans) as (daemon,):
        with sidecars_following(tmp_path, [daemon.url], plans) as sidecars:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session:
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
