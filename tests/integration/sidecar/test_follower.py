"""The sidecar follows a daemon's feed: snapshot, changes, gaps, outages and restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fake_feed import TOKEN, FakeFeed
from tests.integration.sidecar.conftest import PERIOD, ClientFactory, SidecarClient
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def pro(tenant: str, status: str = "active") -> dict[str, Any]:
    return {"tenant": tenant, "tier": "pro", "status": status, "quantity": 1, **PERIOD, "version": 1}


# Generous: a snapshot, a long-poll and a backoff all run on a loaded 2-core runner beside other
# suites; 10 s was seen to run out there. A deadline, never a latency assertion.
EVENTUALLY_S = 60.0


async def eventually(predicate: Callable[[], Awaitable[bool]], within: float = EVENTUALLY_S) -> None:
    """Poll until true; fails with the predicate's name once `within` seconds have passed."""
    try:
        async with asyncio.timeout(within):
            while not await predicate():  # noqa: ASYNC110 - polling HTTP answers, no event to wait on
                await asyncio.sleep(0.05)
    except TimeoutError:
        name = getattr(predicate, "__name__", repr(predicate))
        raise AssertionError(f"{name} did not hold within {within:g} s") from None


@pytest.fixture
def feed() -> FakeFeed:
    return FakeFeed()


@pytest.fixture
async def feed_server(aiohttp_server: ServerFactory, feed: FakeFeed) -> TestServer:
    return await aiohttp_server(feed.app())


def follower_settings(base: SidecarSettings, tmp_path: Path, url: str, **extra: Any) -> SidecarSettings:
    return SidecarSettings(
        replica_path=tmp_path / "followed.db",
        plans=base.plans,
        policies=base.policies,
        daemon_url=url,
        feed_token=TOKEN,
        decision_log_sample=0.0,
        **extra,
    )


Follow = Callable[..., Awaitable[SidecarClient]]


@pytest.fixture
def follow(
    aiohttp_client: ClientFactory, settings: SidecarSettings, tmp_path: Path, feed_server: TestServer
) -> Follow:
    """Starts a sidecar following `feed_server`, its replica in `tmp_path` (or `folder`), with
    `extra` settings."""

    url = str(feed_server.make_url("/"))  # known even once the test has closed the server

    async def start(folder: Path | None = None, **extra: Any) -> SidecarClient:
        return await aiohttp_client(create_app(follower_settings(settings, folder or tmp_path, url, **extra)))

    return start


async def until_allowed(client: SidecarClient, tenant: str) -> None:
    """Wait until the sidecar lets `tenant` use sso: its account has reached the replica."""

    async def allowed() -> bool:
        return bool((await sso(client, tenant))["allow"])

    await eventually(allowed)


async def sso(client: SidecarClient, tenant: str) -> dict[str, Any]:
    response = await client.get("/v1/check", params={"tenant": tenant, "feature": "sso"})
    body: dict[str, Any] = await response.json()
    return body


async def test_bootstraps_from_the_snapshot_then_follows_changes(feed: FakeFeed, follow: Follow) -> None:
    feed.upsert(pro("acme"))
    client = await follow()

    await until_allowed(client, "acme")
    assert (await client.get("/readyz")).status == 200
    feed.upsert(pro("acme", status="unpaid"))

    async def acme_inactive() -> bool:
        return bool((await sso(client, "acme"))["reason"] == "subscription_inactive")

    await eventually(acme_inactive)
    feed.delete("acme")

    async def acme_gone() -> bool:
        return bool((await sso(client, "acme"))["tier"] == "free")

    await eventually(acme_gone)
    assert feed.snapshots_served == 1

    async def position_reported() -> bool:
        status = await (await client.get("/v1/status")).json()
        return bool(status["daemon"]["connected"]) and status["daemon"]["position"] == feed.seq

    await eventually(position_reported)


async def test_not_ready_until_the_first_snapshot(feed: FakeFeed, follow: Follow) -> None:
    feed.fail_with = 503
    client = await follow()
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "snapshot" in (await ready.json())["failing"]["replica"]
    feed.fail_with = None

    async def ready_now() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready_now)


async def test_a_gap_in_the_feed_triggers_a_new_snapshot(feed: FakeFeed, follow: Follow) -> None:
    feed.upsert(pro("acme"))
    client = await follow()

    await until_allowed(client, "acme")
    feed.fail_with = 503  # the daemon goes away while its log is trimmed past our position
    feed.upsert(pro("globex"))
    feed.trim()
    feed.fail_with = None

    await until_allowed(client, "globex")
    assert feed.snapshots_served == 2


async def test_keeps_answering_while_the_daemon_is_down_and_reports_staleness(
    feed: FakeFeed, feed_server: TestServer, follow: Follow
) -> None:
    feed.upsert(pro("acme"))
    client = await follow(staleness_budget_s=0.5)

    await until_allowed(client, "acme")
    await feed_server.close()

    async def disconnected_and_stale() -> bool:
        decision = await sso(client, "acme")
        status = await (await client.get("/v1/status")).json()
        return bool(decision["stale"] and decision["allow"] and not status["daemon"]["connected"])

    await eventually(disconnected_and_stale)
    status = await (await client.get("/v1/status")).json()
    assert status["daemon"]["last_error"]
    assert status["stale"] is True


async def test_restart_resumes_from_the_local_replica_without_a_snapshot(
    feed: FakeFeed, follow: Follow
) -> None:
    feed.upsert(pro("acme"))
    first = await follow()

    await until_allowed(first, "acme")
    await first.close()
    feed.upsert(pro("globex"))
    second = await follow()
    assert (await second.get("/readyz")).status == 200  # ready at once from its own replica
    assert (await sso(second, "acme"))["allow"] is True

    await until_allowed(second, "globex")
    assert feed.snapshots_served == 1


async def test_restart_while_the_daemon_is_down_answers_from_the_replica(
    feed: FakeFeed, feed_server: TestServer, follow: Follow
) -> None:
    feed.upsert(pro("acme"))
    first = await follow()

    await until_allowed(first, "acme")
    await first.close()
    await feed_server.close()
    second = await follow()
    assert (await second.get("/readyz")).status == 200
    assert (await sso(second, "acme"))["allow"] is True
