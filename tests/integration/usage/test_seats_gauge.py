"""Seats as a gauge (`aggregation: latest`), on both backends: the app reports how many seats are in
use, `check seats` compares in use + requested with what the customer bought (the subscription's
quantity), the newest reading by timestamp wins, and a new billing period does not reset it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.usage.conftest import DaemonServer, SidecarClient, SidecarFactory, eventually, settled
from tiergate.sync_daemon.mirror.store import MirrorAccount

NOW = datetime.now(UTC)


def account(quantity: int, start: datetime) -> MirrorAccount:
    return MirrorAccount(
        tenant="t_seats",
        tier="starter",  # seats: {limit: 5, limit_by: quantity}
        status="active",
        quantity=quantity,
        current_period_start=start,
        current_period_end=start + timedelta(days=30),
    )


def reading(tid: str, seats: int | str, seconds_ago: float) -> dict[str, Any]:
    return {
        "transaction_id": tid,
        "external_customer_id": "t_seats",
        "code": "seats",
        "timestamp": time.time() - seconds_ago,
        "properties": {"seats": seats},
    }


async def report(sidecar: SidecarClient, *events: dict[str, Any]) -> list[str]:
    response = await sidecar.post("/v1/usage/batch", json={"events": list(events)})
    assert response.status == 202, await response.text()
    return [e["status"] for e in (await response.json())["events"]]


async def check(sidecar: SidecarClient, quantity: int = 1, feature: str = "seats") -> dict[str, Any]:
    response = await sidecar.get(f"/v1/check?tenant=t_seats&feature={feature}&quantity={quantity}")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_seats_in_use_plus_requested_against_seats_bought(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    await daemon.put(account(4, NOW - timedelta(days=3)))  # bought 4 seats (the tier caps at 5)
    sidecar = await make_sidecar(daemon.url)
    assert await report(sidecar, reading("s-1", 3, 60)) == ["accepted"]
    one_more = await check(sidecar)  # at once, before the daemon has it: 3 + 1 <= 4
    assert (one_more["allow"], one_more["used"], one_more["limit"]) == (True, 3, 4)
    two_more = await check(sidecar, 2)
    assert (two_more["allow"], two_more["reason"], two_more["remaining"]) == (False, "limit_exceeded", 1)

    assert await report(sidecar, reading("s-2", 4, 30)) == ["accepted"]
    assert (await check(sidecar))["allow"] is False  # 4 in use of 4
    assert await report(sidecar, reading("s-older", 2, 45)) == ["accepted"]  # older, in the same delivery
    assert (await check(sidecar))["used"] == 4
    await eventually(lambda: settled(sidecar))
    assert await report(sidecar, reading("s-late", 1, 120)) == ["accepted"]  # older, arriving late
    assert (await check(sidecar))["used"] == 4  # the newer reading the replica holds stays
    assert await report(sidecar, reading("s-2", 0, 10)) == ["duplicate"]  # idempotent by transaction id

    await eventually(lambda: settled(sidecar))
    assert (await daemon.usage("t_seats"))["usage"]["seats"] == 4  # the daemon kept the newest too
    assert (await check(sidecar))["used"] == 4  # now from the replica, through the feed

    assert await report(sidecar, reading("s-3", 2, 0)) == ["accepted"]  # two seats freed
    assert (await check(sidecar, 2))["allow"] is True
    await eventually(lambda: settled(sidecar))
    assert (await daemon.usage("t_seats"))["usage"]["seats"] == 2


async def test_a_new_period_resets_sums_but_not_the_gauge(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    await daemon.put(account(5, NOW - timedelta(days=29)))
    sidecar = await make_sidecar(daemon.url)
    gb = {"transaction_id": "gb-1", "external_customer_id": "t_seats", "code": "storage_gb"}
    await report(sidecar, reading("s-1", 5, 5), {**gb, "properties": {"gb": 7}})
    await eventually(lambda: settled(sidecar))
    await daemon.put(account(5, NOW - timedelta(hours=1)))  # renewed: a new billing period

    async def renewed() -> bool:
        return bool((await check(sidecar, feature="storage_gb"))["used"] == 0)

    await eventually(renewed)
    full = await check(sidecar)
    assert (full["used"], full["allow"]) == (5, False)  # seats in use carry over
    assert (await daemon.usage("t_seats"))["usage"]["seats"] == 5


async def test_a_restarted_sidecar_gets_the_gauge_from_the_snapshot(
    daemon: DaemonServer, make_sidecar: SidecarFactory, tmp_path: Any
) -> None:
    await daemon.put(account(3, NOW - timedelta(days=3)))
    first = await make_sidecar(daemon.url)
    await report(first, reading("s-1", 2, 5))
    await eventually(lambda: settled(first))
    other = await make_sidecar(daemon.url, replica_path=tmp_path / "other" / "replica.db")
    assert (await check(other))["used"] == 2


async def test_a_gauge_cannot_be_reserved_nor_negative(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)
    reserve = await sidecar.post("/v1/check", json={"tenant": "t_seats", "feature": "seats", "reserve": True})
    body = await reserve.json()
    assert (
        reserve.status == 400 and body["error"]["field"] == "feature" and "gauge" in body["error"]["message"]
    )
    negative = await sidecar.post("/v1/usage", json={"event": reading("neg", -1, 0)})
    body = await negative.json()
    assert negative.status == 400 and body["error"]["field"] == "event.properties.seats", body
    assert (await check(sidecar))["used"] == 0
