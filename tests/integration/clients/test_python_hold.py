"""The Python clients' holds against the real sidecar process: a `with` block settles on a clean
exit and releases on an exception; the plain calls; nothing held when denied or unreachable."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from demo.processes import free_port
from tests.integration.clients.conftest import RunningSidecar
from tiergate.client import AsyncTiergateClient, SidecarRejectedError, TiergateClient


@pytest.fixture
def client(sidecar: RunningSidecar) -> Iterator[TiergateClient]:
    with TiergateClient(sidecar.url, timeout_s=5) as client:
        yield client


@pytest.fixture
async def aclient(sidecar: RunningSidecar) -> AsyncIterator[AsyncTiergateClient]:
    async with AsyncTiergateClient(sidecar.url, timeout_s=5) as client:
        yield client


def fresh_tenant() -> str:
    return f"hold-{uuid.uuid4().hex[:8]}"


def test_a_clean_block_settles_what_it_records(client: TiergateClient) -> None:
    tenant = fresh_tenant()
    with client.hold(tenant, "exports", 6) as held:
        assert held.allow and held.hold.state is not None and held.hold.state.state == "held"
        assert client.check(tenant, "exports").used == 6  # counted from creation
        held.record(2)
    assert held.result is not None and (held.result.state, held.result.settled_quantity) == ("settled", 2)
    assert client.check(tenant, "exports").used == 2
    with client.hold(tenant, "exports", 3) as whole:  # no record: the held quantity settles
        pass
    assert whole.result is not None and whole.result.settled_quantity == 3
    assert client.check(tenant, "exports").used == 5


def test_an_exception_releases_and_propagates(client: TiergateClient) -> None:
    tenant = fresh_tenant()
    with pytest.raises(ZeroDivisionError), client.hold(tenant, "exports", 4) as held:
        1 / 0  # noqa: B018  # the point: the block fails
    assert held.result is not None and held.result.state == "released"
    assert client.check(tenant, "exports").used == 0


def test_a_denied_hold_holds_nothing_and_settles_nothing(client: TiergateClient) -> None:
    tenant = fresh_tenant()
    with client.hold(tenant, "exports", 11) as held:  # 10 a month on free
        assert not held.allow and held.decision.reason == "limit_exceeded" and held.hold.hold_id is None
    assert held.result is None and client.check(tenant, "exports").used == 0


def test_the_plain_calls_and_a_rejected_settle(client: TiergateClient) -> None:
    tenant = fresh_tenant()
    hold = client.create_hold(tenant, "exports", 2, ttl_s=60, transaction_id="plain-1")
    assert hold.hold_id is not None and hold.transaction_id == "plain-1"
    again = client.create_hold(tenant, "exports", 2, transaction_id="plain-1")
    assert again.hold_id == hold.hold_id and again.state is not None and again.state.replayed
    assert client.extend_hold(hold.hold_id, 600).state == "held"
    with pytest.raises(SidecarRejectedError) as caught:
        client.settle_hold(hold.hold_id, 20)  # beyond the hold, and beyond the limit
    assert (caught.value.status, caught.value.code) == (409, "overage_rejected")
    assert client.settle_hold(hold.hold_id, 20, overage="cap").settled_quantity == 2
    assert client.settle_hold(hold.hold_id, 20, overage="cap").replayed
    with pytest.raises(SidecarRejectedError) as caught:
        client.release_hold(hold.hold_id)
    assert caught.value.status == 409


def test_unreachable_holds_nothing() -> None:
    with TiergateClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5) as client:
        with client.hold("acme", "api_calls") as held:
            assert not held.allow and held.hold.hold_id is None
        assert held.result is None


async def test_the_async_block(aclient: AsyncTiergateClient) -> None:
    tenant = fresh_tenant()
    async with aclient.hold(tenant, "api_calls", 10) as held:
        assert held.allow
        held.record(7)
    assert held.result is not None and held.result.settled_quantity == 7
    with pytest.raises(KeyError):
        async with aclient.hold(tenant, "api_calls", 5) as failed:
            raise KeyError("boom")
    assert failed.result is not None and failed.result.state == "released"
    assert (await aclient.check(tenant, "api_calls")).used == 7
