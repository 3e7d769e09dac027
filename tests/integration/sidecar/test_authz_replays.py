"""The hook's dedup key: only the proxy's header, a bounded window, and never a deny turned allow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.sidecar.conftest import (
    ACCOUNTS,
    MONTH_START,
    USAGE,
    ClientFactory,
    SidecarClient,
    write_replica,
)
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings

KEY_HEADER = "X-Tiergate-Request-Id"


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: SidecarSettings, tmp_path: Path) -> SidecarClient:
    edge = {"tenant": "free-edge", "code": "api_calls", "period_start": MONTH_START, "value": 998}
    write_replica(settings.replica_path, ACCOUNTS, [*USAGE, edge])  # free: 1000 api_calls a month
    keyed = settings.model_copy(update={"authz_request_id_header": KEY_HEADER})
    return await aiohttp_client(create_app(keyed))


async def call(
    client: SidecarClient, key: str | None, tenant: str = "free-edge", path: str = "/api/x"
) -> int:
    headers = {"X-Original-URI": path, "X-Original-Method": "GET", "X-Tenant-Id": tenant}
    return (await client.get("/v1/authz", headers=headers | ({KEY_HEADER: key} if key else {}))).status


async def used(client: SidecarClient, tenant: str = "free-edge") -> int:
    response = await client.get("/v1/check", params={"tenant": tenant, "feature": "api_calls"})
    return int((await response.json())["used"])


async def test_a_retry_counts_once_and_a_replay_never_passes_a_used_up_quota(client: SidecarClient) -> None:
    assert [await call(client, "a"), await call(client, "a")] == [200, 200]
    assert await used(client) == 999  # the retry was not counted again
    assert await call(client, "b") == 200  # the last unit
    assert await call(client, "b") == 200  # its retry: the same answer, not counted again
    assert [await call(client, "c"), await call(client, None)] == [429, 429]
    assert [await call(client, "a"), await call(client, "b")] == [200, 200]  # still within the limit
    assert await used(client) == 1000
    # Usage from elsewhere (the app, another sidecar) takes the tenant past its limit: the replays of
    # requests that were counted within it are now refused too.
    event = {"transaction_id": "elsewhere-1", "external_customer_id": "free-edge", "code": "api_calls"}
    assert (await client.post("/v1/usage", json={"event": event})).status == 202
    assert [await call(client, "a"), await call(client, "b")] == [429, 429]
    assert await used(client) == 1001


async def test_the_same_key_for_another_tenant_or_request_is_a_new_request(client: SidecarClient) -> None:
    before = await used(client, "free-light")
    assert await call(client, "k", tenant="free-light") == 200
    assert await call(client, "k", tenant="free-light", path="/api/y") == 200
    assert await call(client, "k", tenant="free-edge") == 200
    assert await used(client, "free-light") == before + 2
    assert await used(client, "free-edge") == 999


async def test_a_retry_that_overlaps_its_original_gets_the_same_answer_counted_once(
    client: SidecarClient,
) -> None:
    """A proxy retries on a timeout while the first attempt is still being decided: the last unit
    is counted once, and both attempts get its answer."""
    assert await call(client, "warm") == 200  # 999 used: one unit left
    assert await asyncio.gather(*(call(client, "last") for _ in range(5))) == [200] * 5
    assert await used(client) == 1000
    assert await call(client, "after") == 429
