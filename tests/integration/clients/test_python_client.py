"""The Python clients against a real sidecar process: every call, bad input, and network faults."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from demo.processes import free_port
from tests.integration.clients.conftest import RunningSidecar
from tests.integration.clients.proxy import faulty_proxy
from tiergate.client import (
    UNREACHABLE,
    AsyncTiergateClient,
    FailPolicy,
    SidecarRejectedError,
    SidecarUnreachableError,
    TiergateClient,
)


@pytest.fixture
def client(sidecar: RunningSidecar) -> Iterator[TiergateClient]:
    with TiergateClient(sidecar.url, timeout_s=5) as client:
        yield client


@pytest.fixture
async def aclient(sidecar: RunningSidecar) -> AsyncIterator[AsyncTiergateClient]:
    async with AsyncTiergateClient(sidecar.url, timeout_s=5) as client:
        yield client


def fresh_tenant() -> str:
    return f"client-{uuid.uuid4().hex[:8]}"


def test_check_returns_the_sidecars_frozen_decision(client: TiergateClient) -> None:
    allowed = client.check("pro-active", "api_calls", 1)  # 99,999 used of 100,000
    assert (allowed.allow, allowed.reason, allowed.tier, allowed.remaining) == (True, "ok", "pro", 1)
    assert allowed.decision_id and allowed.policy_revision and allowed.data_as_of is not None
    over = client.check("pro-active", "api_calls", 2)
    assert (over.allow, over.reason) == (False, "limit_exceeded")
    with pytest.raises(dataclasses.FrozenInstanceError):
        over.allow = True  # type: ignore[misc]  # the point: results cannot be changed


def test_batch_answers_in_order(client: TiergateClient) -> None:
    decisions = client.check_batch(
        [("pro-active", "sso", 1), ("nobody", "sso", 1), ("pro-overdue", "sso", 1)]
    )
    assert [d.reason for d in decisions] == ["ok", "not_in_plan", "payment_overdue"]


def test_entitlements_encode_any_tenant_id(client: TiergateClient) -> None:
    odd = "a/b?c=d&e f#g%2F"
    assert client.entitlements(odd).tenant == odd
    pro = client.entitlements("pro-overdue")
    assert pro.account is not None and pro.account.status == "past_due"
    assert pro.features["sso"].reason == "payment_overdue" and pro.features["dashboards"].allow


def test_usage_gets_transaction_ids_and_counts_once(client: TiergateClient) -> None:
    tenant = fresh_tenant()
    (one,) = client.record_usage({"external_customer_id": tenant, "code": "api_calls"})
    assert one.status == "accepted" and len(one.transaction_id) == 32
    batch = [
        {"external_customer_id": tenant, "code": "api_calls"},
        {"transaction_id": one.transaction_id, "external_customer_id": tenant, "code": "api_calls"},
    ]
    receipts = client.record_usage(batch)
    assert [r.status for r in receipts] == ["accepted", "duplicate"]
    assert client.check(tenant, "api_calls").used == 2  # read-your-writes through the sidecar


def test_reserve_counts_and_a_replay_counts_nothing(client: TiergateClient) -> None:
    tenant = fresh_tenant()
    first = client.reserve(tenant, "exports", 4)
    assert first.allow and first.reserved and not first.replayed
    again = client.reserve(tenant, "exports", 4, transaction_id=first.transaction_id)
    assert again.allow and again.replayed
    assert client.check(tenant, "exports").used == 4
    denied = client.reserve(tenant, "exports", 7)  # 10 a month on free
    assert (denied.allow, denied.reserved, denied.decision.reason) == (False, False, "limit_exceeded")


def test_bad_input_is_the_sidecars_400_naming_the_field(client: TiergateClient) -> None:
    with pytest.raises(SidecarRejectedError) as caught:
        client.check("pro-active", "sso", 0)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "bad_request", "quantity")
    with pytest.raises(SidecarRejectedError, match=r"events\[0\].code"):
        client.record_usage([{"external_customer_id": "t", "code": "teleports"}])
    with pytest.raises(ValueError, match="1 to 100 events"):
        client.record_usage([{"code": "api_calls"}] * 101)


def test_unreachable_follows_the_declared_policy() -> None:
    policy = FailPolicy(features={"dashboards": "fail_open"})
    with TiergateClient(f"http://127.0.0.1:{free_port()}", fail_policy=policy) as client:
        closed = client.check("acme", "sso")
        opened = client.check("acme", "dashboards")
        assert (closed.allow, closed.reason, closed.stale) == (False, UNREACHABLE, True)
        assert (opened.allow, opened.reason) == (True, UNREACHABLE)
        reservation = client.reserve("acme", "api_calls")
        assert (reservation.allow, reservation.reserved) == (False, False)
        with pytest.raises(SidecarUnreachableError, match="failed after"):
            client.record_usage({"external_customer_id": "acme", "code": "api_calls"})
    for bad in ({"timeout_s": 0}, {"retries": -1}, {"pool_size": 0}):
        with pytest.raises(ValueError):
            TiergateClient("http://127.0.0.1:9191", **bad)  # type: ignore[arg-type]  # the point: refused
        with pytest.raises(ValueError):
            AsyncTiergateClient("http://127.0.0.1:9191", **bad)  # type: ignore[arg-type]  # the point: refused
    with pytest.raises(ValueError, match="must be http"):
        TiergateClient("https://sidecar:9191")
    with pytest.raises(ValueError, match="fail_sometimes"):
        FailPolicy(features={"sso": "fail_sometimes"})  # type: ignore[dict-item]  # the point: refused


def test_connections_are_reused_and_a_dropped_one_is_retried(sidecar: RunningSidecar) -> None:
    port = int(sidecar.url.rsplit(":", 1)[1])
    with faulty_proxy(port) as proxy, TiergateClient(proxy.url, timeout_s=5) as client:
        for _ in range(5):
            assert client.check("pro-active", "sso").allow
        assert proxy.accepted == 1
        proxy.drop_next = 1  # the next new connection dies: the retry gets the answer
        client.close()
        assert client.check("pro-active", "sso").reason == "ok"
        assert proxy.accepted == 3
    with faulty_proxy(port) as proxy, TiergateClient(proxy.url, timeout_s=5, retries=0) as client:
        proxy.drop_next = 1
        assert client.check("pro-active", "sso").reason == UNREACHABLE


def test_a_wedged_sidecar_costs_the_timeout_not_a_hang(sidecar: RunningSidecar) -> None:
    port = int(sidecar.url.rsplit(":", 1)[1])
    with faulty_proxy(port) as proxy, TiergateClient(proxy.url, timeout_s=0.2) as client:
        proxy.hold = True
        decision = client.check("pro-active", "sso")
        assert (decision.allow, decision.reason) == (False, UNREACHABLE)
        assert client.check("pro-active", "sso", timeout_s=0.05).reason == UNREACHABLE
        assert proxy.accepted == 2  # a timeout is not retried: the budget is spent


async def test_async_client_makes_the_same_calls(aclient: AsyncTiergateClient) -> None:
    tenant = fresh_tenant()
    assert (await aclient.check("pro-active", "api_calls", 2)).reason == "limit_exceeded"
    decisions = await aclient.check_batch([("pro-active", "sso", 1), ("nobody", "sso", 1)])
    assert [d.allow for d in decisions] == [True, False]
    assert (await aclient.entitlements("x/y z")).tenant == "x/y z"
    (receipt,) = await aclient.record_usage(
        {"external_customer_id": tenant, "code": "storage_gb", "properties": {"gb": 1}}
    )
    assert receipt.status == "accepted"
    assert (await aclient.check(tenant, "storage_gb")).used == 1
    reservation = await aclient.reserve(tenant, "api_calls", 2)
    assert reservation.reserved and (await aclient.check(tenant, "api_calls")).used == 2
    with pytest.raises(SidecarRejectedError, match="tenant"):
        await aclient.check("", "sso")


async def test_async_client_faults(sidecar: RunningSidecar) -> None:
    port = int(sidecar.url.rsplit(":", 1)[1])
    with faulty_proxy(port) as proxy:
        async with AsyncTiergateClient(proxy.url, timeout_s=5) as client:
            for _ in range(3):
                assert (await client.check("pro-active", "sso")).allow
            assert proxy.accepted == 1
        async with AsyncTiergateClient(proxy.url, timeout_s=5) as client:
            proxy.drop_next = 1
            assert (await client.check("pro-active", "sso")).reason == "ok"
        policy = FailPolicy(default="fail_open")
        async with AsyncTiergateClient(proxy.url, timeout_s=0.2, fail_policy=policy) as client:
            proxy.hold = True
            decision = await client.check("pro-active", "sso")
            assert (decision.allow, decision.reason) == (True, UNREACHABLE)


def test_the_client_imports_nothing_of_the_servers() -> None:
    code = (
        "import sys, tiergate.client; "
        "print(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules} & {'tiergate.sidecar', "
        "'tiergate.sync_daemon'}) + sorted({m.split('.')[0] for m in sys.modules} & {'stripe', "
        "'sqlite_utils', 'structlog', 'prometheus_client', 'regorus', 'apscheduler'}) "
        "+ sorted(m for m in sys.modules if m.startswith('aiohttp.web')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
