"""Lago's event contract end to end: a subscription id alone, both ids, corrections, every field kept."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarClient,
    SidecarFactory,
    eventually,
    settled,
    used,
)
from tiergate.sync_daemon.mirror.store import MirrorAccount

NOW = datetime.now(UTC)
PERIOD = (NOW - timedelta(days=3), NOW + timedelta(days=27))


def lago_event(transaction_id: str, gb: int | str = 4, **fields: Any) -> dict[str, Any]:
    """Shaped like the example in Lago's API reference (EventInputObject): no customer id."""
    return {
        "transaction_id": transaction_id,
        "external_subscription_id": "sub_1NxLago",
        "code": "storage_gb",
        "timestamp": f"{time.time() - 5:.3f}",
        "precise_total_amount_cents": "1234.56",
        "properties": {"gb": gb, "region": "eu-west"},
        **fields,
    }


async def subscribed(daemon: DaemonServer, make_sidecar: SidecarFactory) -> SidecarClient:
    await daemon.put(
        MirrorAccount(
            tenant="t_lago",
            tier="pro",
            status="active",
            subscription_id="sub_1NxLago",
            current_period_start=PERIOD[0],
            current_period_end=PERIOD[1],
        )
    )
    return await make_sidecar(daemon.url)


async def stored(sidecar: SidecarClient, daemon: DaemonServer, transaction_id: str) -> dict[str, Any]:
    async with sidecar.session.get(
        f"{daemon.url}/v1/usage/events/{transaction_id}", headers=AUTH
    ) as response:
        assert response.status == 200
        body: dict[str, Any] = (await response.json())["event"]
        return body


async def test_a_lago_event_is_resolved_counted_and_stored_with_every_field(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await subscribed(daemon, make_sidecar)
    sent = lago_event("lago-1")
    response = await sidecar.post("/v1/usage", json={"event": sent})
    assert response.status == 202, await response.text()
    assert (await response.json())["event"]["external_customer_id"] == "t_lago"
    assert await used(sidecar, "t_lago", "storage_gb") == 4  # counted at once, for the subscription's tenant
    await eventually(lambda: settled(sidecar))
    kept = await stored(sidecar, daemon, "lago-1")
    assert {name: kept[name] for name in sent} == sent  # every Lago field, exactly as sent
    assert (kept["tenant"], kept["value"]) == ("t_lago", 4)


async def test_both_ids_must_agree_and_customer_alone_still_works(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await subscribed(daemon, make_sidecar)
    wrong = await sidecar.post("/v1/usage", json={"event": lago_event("x", external_customer_id="t_other")})
    body = await wrong.json()
    assert wrong.status == 400 and body["error"]["field"] == "event.external_customer_id"
    assert "sub_1NxLago" in body["error"]["message"] and "t_other" in body["error"]["message"]
    unknown = await sidecar.post(
        "/v1/usage", json={"event": lago_event("y", external_subscription_id="sub_no")}
    )
    assert (
        unknown.status == 400 and (await unknown.json())["error"]["field"] == "event.external_subscription_id"
    )
    both = await sidecar.post("/v1/usage", json={"event": lago_event("z", external_customer_id="t_lago")})
    alone = {
        "transaction_id": "w",
        "external_customer_id": "t_lago",
        "code": "storage_gb",
        "properties": {"gb": 1},
    }
    assert both.status == 202 and (await sidecar.post("/v1/usage", json={"event": alone})).status == 202
    assert await used(sidecar, "t_lago", "storage_gb") == 5


async def test_a_correction_lowers_the_counter_but_never_below_zero(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await subscribed(daemon, make_sidecar)
    batch = [lago_event("c-1", gb=6), lago_event("c-2", gb="-2"), lago_event("c-3", gb=-100)]
    first = await sidecar.post("/v1/usage/batch", json={"events": batch[:2]})
    assert first.status == 202 and await used(sidecar, "t_lago", "storage_gb") == 4
    assert (await sidecar.post("/v1/usage", json={"event": batch[2]})).status == 202
    assert await used(sidecar, "t_lago", "storage_gb") == 0  # a decision never sees a negative count
    await eventually(lambda: settled(sidecar))
    assert await used(sidecar, "t_lago", "storage_gb") == 0
    assert await daemon.used("t_lago", "storage_gb") == -96  # the mirror keeps the exact sum


async def test_null_properties_are_an_empty_object(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await subscribed(daemon, make_sidecar)
    event = {"transaction_id": " spaced ", "external_subscription_id": "sub_1NxLago", "code": "api_calls"}
    response = await sidecar.post("/v1/usage", json={"event": {**event, "properties": None}})
    assert response.status == 202 and (await response.json())["event"]["transaction_id"] == " spaced "
    await eventually(lambda: settled(sidecar))
    async with sidecar.session.get(f"{daemon.url}/v1/usage/events/%20spaced%20", headers=AUTH) as found:
        assert found.status == 200  # the identifier kept as sent, spaces and all
