"""`check_url`: the Python clients' checks on the sidecar's check listener (TIERGATE_CHECK_PORT),
against the same real sidecar process as the other client tests: the main port's answers, the fail
policy when the listener does not answer, and every other call still on the main port."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from demo.processes import free_port
from tests.integration.clients.conftest import RunningSidecar
from tests.integration.clients.proxy import faulty_proxy
from tests.integration.sidecar.conftest import ACCOUNTS, SAMPLE_FEATURES
from tiergate.client import (
    UNREACHABLE,
    AsyncTiergateClient,
    FailPolicy,
    SidecarRejectedError,
    SidecarUnreachableError,
    TiergateClient,
    calls,
)
from tiergate.models import Decision

VOLATILE = ("decision_id", "data_as_of", "valid_until")
ODD_TENANTS = ["a/b?c=d&e f#g%2F", "plus+sign", "é ü", "semi;colon=x", " pro-active "]
TENANTS = [*sorted({str(a["tenant"]) for a in ACCOUNTS}), "nobody", *ODD_TENANTS]
QUANTITIES = (1, 3, 100_000)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def comparable(decision: Decision) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(decision).items() if k not in VOLATILE}


@pytest.fixture
def both(sidecar: RunningSidecar) -> Iterator[tuple[TiergateClient, TiergateClient]]:
    with (
        TiergateClient(sidecar.url, timeout_s=5) as main,
        TiergateClient(sidecar.url, check_url=sidecar.check_url, timeout_s=5) as listener,
    ):
        yield main, listener


def test_the_check_is_a_percent_encoded_get_on_the_check_listener() -> None:
    call = calls.check(FailPolicy(), "a/b?c=d&e f+é", "sso", 2, endpoint="check")
    assert (call.method, call.endpoint, call.body) == ("GET", "check", None)
    assert call.path == "/v1/check?tenant=a%2Fb%3Fc%3Dd%26e%20f%2B%C3%A9&feature=sso&quantity=2"
    assert calls.check(FailPolicy(), "t", "sso").endpoint == "main"


def test_the_check_listener_answers_as_the_main_port_does(
    both: tuple[TiergateClient, TiergateClient],
) -> None:
    main, listener = both
    compared = 0
    for tenant, feature, quantity in itertools.product(TENANTS, SAMPLE_FEATURES, QUANTITIES):
        expected, got = main.check(tenant, feature, quantity), listener.check(tenant, feature, quantity)
        assert comparable(got) == comparable(expected), (tenant, feature, quantity)
        assert got.decision_id and got.reason != UNREACHABLE
        compared += 1
    assert compared == len(TENANTS) * len(SAMPLE_FEATURES) * len(QUANTITIES)


def test_checks_use_the_check_port_and_everything_else_the_main_port(sidecar: RunningSidecar) -> None:
    tenant = f"client-{uuid.uuid4().hex[:8]}"
    with (
        faulty_proxy(port_of(sidecar.url)) as main_proxy,
        faulty_proxy(port_of(sidecar.check_url)) as check_proxy,
        TiergateClient(main_proxy.url, check_url=check_proxy.url, timeout_s=5) as client,
    ):
        for _ in range(5):
            assert client.check("pro-active", "sso").reason == "ok"
        assert (check_proxy.accepted, main_proxy.accepted) == (1, 0)  # one kept-alive connection
        assert client.reserve(tenant, "exports", 2).reserved
        client.record_usage({"external_customer_id": tenant, "code": "exports"})
        assert client.entitlements(tenant).features["exports"].used == 3
        assert client.check(tenant, "exports").used == 3  # read-your-writes across the two ports
        assert (check_proxy.accepted, main_proxy.accepted) == (1, 1)
        check_proxy.drop_next = 1  # a dropped check connection is retried, as on the main port
        client.close()
        assert client.check("pro-active", "sso").reason == "ok"
        assert check_proxy.accepted == 3


def test_a_stopped_check_listener_gets_the_fail_policy_and_spares_the_main_port(
    sidecar: RunningSidecar,
) -> None:
    policy = FailPolicy(features={"dashboards": "fail_open"})
    tenant = f"client-{uuid.uuid4().hex[:8]}"
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    with TiergateClient(sidecar.url, check_url=down, fail_policy=policy, timeout_s=5) as client:
        closed, opened = client.check("pro-active", "sso"), client.check("pro-active", "dashboards")
        assert (closed.allow, closed.reason, closed.stale) == (False, UNREACHABLE, True)
        assert (opened.allow, opened.reason) == (True, UNREACHABLE)
        assert client.reserve(tenant, "exports").reserved  # usage and reserves: the main port
        (receipt,) = client.record_usage({"external_customer_id": tenant, "code": "exports"})
        assert receipt.status == "accepted"
        assert client.check_batch([(tenant, "exports", 1)])[0].used == 2
    with (
        faulty_proxy(port_of(sidecar.check_url)) as proxy,
        TiergateClient(sidecar.url, check_url=proxy.url, fail_policy=policy, timeout_s=0.2) as client,
    ):
        proxy.hold = True  # a wedged check listener costs the timeout, then the policy answers
        assert (client.check("pro-active", "dashboards").allow, proxy.accepted) == (True, 1)
        assert client.entitlements("pro-active").features["sso"].allow


def test_bad_input_is_the_same_rejection_as_on_the_main_port(
    both: tuple[TiergateClient, TiergateClient],
) -> None:
    main, listener = both
    for tenant, feature, quantity in [("pro-active", "sso", 0), ("", "sso", 1), ("pro-active", "", 1)]:
        rejections = []
        for client in (main, listener):
            with pytest.raises(SidecarRejectedError) as caught:
                client.check(tenant, feature, quantity)
            rejections.append((caught.value.status, caught.value.code, caught.value.field))
        assert rejections[0] == rejections[1], (tenant, feature, quantity)
        assert rejections[1][0] == 400 and rejections[1][2] is not None


def test_check_url_is_validated_like_base_url() -> None:
    for bad in ("https://127.0.0.1:9192", "127.0.0.1:9192", "http://"):
        with pytest.raises(ValueError, match=r"check_url .* must be http"):
            TiergateClient("http://127.0.0.1:9191", check_url=bad)
        with pytest.raises(ValueError, match=r"check_url .* must be http"):
            AsyncTiergateClient("http://127.0.0.1:9191", check_url=bad)


async def test_the_async_client_checks_on_the_check_listener(sidecar: RunningSidecar) -> None:
    tenant = f"client-{uuid.uuid4().hex[:8]}"
    async with (
        AsyncTiergateClient(sidecar.url, timeout_s=5) as main,
        AsyncTiergateClient(sidecar.url, check_url=sidecar.check_url, timeout_s=5) as listener,
    ):
        for t, feature, quantity in itertools.product(TENANTS, ("sso", "api_calls", "exports"), (1, 3)):
            expected = await main.check(t, feature, quantity)
            assert comparable(await listener.check(t, feature, quantity)) == comparable(expected)
        with pytest.raises(SidecarRejectedError) as caught:
            await listener.check("pro-active", "sso", 0)
        assert (caught.value.status, caught.value.field) == (400, "quantity")
        assert (await listener.reserve(tenant, "api_calls", 2)).reserved
        assert (await listener.check(tenant, "api_calls")).used == 2
    down = f"http://127.0.0.1:{free_port()}"
    policy = FailPolicy(default="fail_open")
    async with AsyncTiergateClient(sidecar.url, check_url=down, fail_policy=policy, timeout_s=5) as client:
        decision = await client.check("pro-active", "sso")
        assert (decision.allow, decision.reason) == (True, UNREACHABLE)
        (receipt,) = await client.record_usage({"external_customer_id": tenant, "code": "api_calls"})
        assert receipt.status == "accepted"
    async with AsyncTiergateClient(down, check_url=sidecar.check_url, timeout_s=5) as client:
        assert (await client.check("pro-active", "sso")).reason == "ok"  # only checks go there
        with pytest.raises(SidecarUnreachableError, match="failed after"):
            await client.entitlements("pro-active")


async def test_a_wedged_check_port_does_not_starve_the_main_ports_pool(sidecar: RunningSidecar) -> None:
    with faulty_proxy(port_of(sidecar.check_url)) as proxy:
        proxy.hold = True
        async with AsyncTiergateClient(sidecar.url, check_url=proxy.url, pool_size=1, timeout_s=60) as client:
            stuck = asyncio.create_task(client.check("pro-active", "sso"))
            for _ in range(3000):  # until the check's request sits in the proxy (30 s at most)
                if proxy.accepted == 1 or stuck.done():
                    break
                await asyncio.sleep(0.01)
            assert proxy.accepted == 1 and not stuck.done()
            entitlements = await client.entitlements("pro-active", timeout_s=30)
            assert entitlements.features["sso"].allow and not stuck.done()
            stuck.cancel()
