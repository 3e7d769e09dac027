"""Decimal and negative `sum` values, exact from the app's JSON to the decision, on both backends.

The sidecar (outbox, pending totals, replica), the daemon (events, counters, feed) and the event
listing all keep `0.1` as one tenth: a thousand of them are exactly 100, never 99.99999999999986.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import DaemonServer, SidecarClient, SidecarFactory, eventually, settled
from tiergate.sync_daemon.mirror.store import MirrorAccount

NOW = datetime.now(UTC)
PERIOD = (NOW - timedelta(days=3), NOW + timedelta(days=27))


def gb_event(tid: str, gb: str, tenant: str = "t_dec") -> str:
    """One event as JSON text, `gb` written exactly as given (a JSON number, or a quoted string)."""
    return (
        f'{{"transaction_id": "{tid}", "external_customer_id": "{tenant}", '
        f'"code": "storage_gb", "properties": {{"gb": {gb}}}}}'
    )


async def post_raw(sidecar: SidecarClient, events: list[str]) -> tuple[int, Any]:
    body = '{"events": [' + ", ".join(events) + "]}"
    response = await sidecar.post(
        "/v1/usage/batch", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    return response.status, await response.json()


async def check(sidecar: SidecarClient, tenant: str, quantity: int = 1) -> dict[str, Any]:
    response = await sidecar.get(f"/v1/check?tenant={tenant}&feature=storage_gb&quantity={quantity}")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def daemon_counter(daemon: DaemonServer, tenant: str) -> object:
    return (await daemon.usage(tenant))["usage"].get("storage_gb", 0)


async def on_pro(daemon: DaemonServer, make_sidecar: SidecarFactory, tenant: str) -> SidecarClient:
    await daemon.put(
        MirrorAccount(
            tenant=tenant,
            tier="pro",  # storage_gb: {limit: 100}
            status="active",
            current_period_start=PERIOD[0],
            current_period_end=PERIOD[1],
        )
    )
    return await make_sidecar(daemon.url)


async def test_a_thousand_tenths_are_exactly_one_hundred_and_a_correction_lowers_them(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await on_pro(daemon, make_sidecar, "t_dec")
    for start in range(0, 1000, 100):  # JSON numbers, and every tenth one a decimal string
        batch = [gb_event(f"tenth-{n}", '"0.1"' if n % 10 == 0 else "0.1") for n in range(start, start + 100)]
        status, body = await post_raw(sidecar, batch)
        assert status == 202, body
    full = await check(sidecar, "t_dec")  # counted at once (pending): exactly the limit, no more room
    assert (full["used"], full["allow"]) == (100, False)
    await eventually(lambda: settled(sidecar))
    assert await daemon_counter(daemon, "t_dec") == 100  # an integer: exact, not 99.99999999999986
    assert (await check(sidecar, "t_dec"))["used"] == 100  # the replica's counter, from the feed

    status, _ = await post_raw(sidecar, [gb_event("fix-1", '"-0.75"')])  # a correction
    assert status == 202
    lowered = await check(sidecar, "t_dec")  # 99.25 exactly: 99.25 + 1 > 100 still refuses
    assert (lowered["used"], lowered["allow"]) == (100, False)
    await eventually(lambda: settled(sidecar))
    assert await daemon_counter(daemon, "t_dec") == "99.25"  # a decimal counter reads as a string
    status, _ = await post_raw(sidecar, [gb_event("fix-2", "-0.25")])
    assert status == 202
    room = await check(sidecar, "t_dec")  # 99 + 1 <= 100: allowed at once
    assert (room["used"], room["allow"]) == (99, True)
    await eventually(lambda: settled(sidecar))
    assert await daemon_counter(daemon, "t_dec") == 99
    assert (await check(sidecar, "t_dec"))["allow"] is True


async def test_a_counter_below_zero_is_kept_exactly_and_decided_as_zero(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await on_pro(daemon, make_sidecar, "t_neg")
    status, _ = await post_raw(sidecar, [gb_event("neg-1", '"-2.5"', "t_neg")])  # ahead of what it corrects
    assert status == 202
    assert (await check(sidecar, "t_neg"))["used"] == 0
    await eventually(lambda: settled(sidecar))
    assert await daemon_counter(daemon, "t_neg") == "-2.5"  # the true sum, in storage
    assert (await check(sidecar, "t_neg", 100))["allow"] is True  # the feed carried 0
    status, _ = await post_raw(sidecar, [gb_event("pos-1", "3", "t_neg")])
    assert status == 202
    assert (await check(sidecar, "t_neg"))["used"] == 1  # 0.5, rounded up to a whole unit
    await eventually(lambda: settled(sidecar))
    assert await daemon_counter(daemon, "t_neg") == "0.5"
    after = await check(sidecar, "t_neg", 100)  # 0.5 + 100 > 100
    assert (after["used"], after["allow"]) == (1, False)


async def test_stored_events_keep_the_number_as_written(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await on_pro(daemon, make_sidecar, "t_text")
    events = [gb_event("as-number", "2.50", "t_text"), gb_event("as-string", '"0.000001"', "t_text")]
    assert (await post_raw(sidecar, events))[0] == 202
    await eventually(lambda: settled(sidecar))
    async with sidecar.session.get(f"{daemon.url}/v1/usage/events?tenant=t_text", headers=AUTH) as response:
        text = await response.text()
    listed = {e["transaction_id"]: e for e in json.loads(text, parse_float=Decimal)["events"]}
    assert listed["as-number"]["value"] == "2.5" and listed["as-string"]["value"] == "0.000001"
    assert '"gb":2.50' in text  # Lago's document as sent: the number's own text, not a float's
    assert listed["as-string"]["properties"] == {"gb": "0.000001"}
    assert await daemon_counter(daemon, "t_text") == "2.500001"


async def test_numbers_beyond_the_bounds_are_refused_and_change_nothing(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await on_pro(daemon, make_sidecar, "t_bound")
    for gb, rule in (
        ("0.10000000000000000001", "digits after the decimal point"),  # a float would read 0.1
        ('"1.0000001"', "digits after the decimal point"),
        ("1e10", "between"),
        ('"NaN"', "finite"),
    ):
        status, body = await post_raw(
            sidecar, [gb_event("ok", "1", "t_bound"), gb_event("bad", gb, "t_bound")]
        )
        assert status == 400 and body["error"]["field"] == "events[1].properties.gb", body
        assert rule in body["error"]["message"], body
    assert (await check(sidecar, "t_bound"))["used"] == 0
