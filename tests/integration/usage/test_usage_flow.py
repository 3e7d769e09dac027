"""Usage through a sidecar into a real daemon: read-your-writes, replays, outages, reserves, bad input."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarFactory,
    events,
    eventually,
    settled,
    start_daemon,
    usage_status,
    used,
)


async def test_accepted_usage_counts_at_once_and_once(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)
    response = await sidecar.post("/v1/usage/batch", json={"events": events("t_free", 5)})
    assert response.status == 202
    assert [e["status"] for e in (await response.json())["events"]] == ["accepted"] * 5
    assert await used(sidecar, "t_free") == 5  # before the daemon confirmed anything

    async def daemon_has_it() -> bool:
        return await daemon.used("t_free") == 5

    await eventually(daemon_has_it)
    await eventually(lambda: settled(sidecar))
    assert await used(sidecar, "t_free") == 5  # the replica's counter replaced the pending one


async def test_replays_with_ten_percent_duplicates_count_exactly(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url, delivery_batch_size=37)
    rng = random.Random(5)
    unique = events("t_replay", 900, prefix="r")
    sent: list[dict[str, Any]] = []
    stream = list(unique)
    for i in range(0, len(stream), 90):
        batch = stream[i : i + 90]
        seen = sent + batch
        batch += rng.sample(seen, 10)  # 10% replays: earlier batches and this very batch
        rng.shuffle(batch)
        response = await sidecar.post("/v1/usage/batch", json={"events": batch})
        assert response.status == 202
        sent += batch
        # read-your-writes at every step, whatever has been delivered meanwhile
        assert await used(sidecar, "t_replay") == min(i + 90, 900)

    async def daemon_exact() -> bool:
        return await daemon.used("t_replay") == 900

    await eventually(daemon_exact)
    await eventually(lambda: settled(sidecar))
    assert await used(sidecar, "t_replay") == 900
    assert await daemon.used("t_replay") == 900


async def test_replayed_single_event_is_accepted_and_counted_once(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)
    one = {
        "transaction_id": "tx-1",
        "external_customer_id": "t_one",
        "code": "storage_gb",
        "properties": {"gb": 3},
    }
    first = await sidecar.post("/v1/usage", json={"event": one})
    again = await sidecar.post("/v1/usage", json={"event": {**one, "properties": {"gb": 50}}})
    assert (first.status, again.status) == (202, 202)
    assert (await again.json())["event"]["status"] == "duplicate"
    assert await used(sidecar, "t_one", "storage_gb") == 3

    async def delivered() -> bool:
        return await daemon.used("t_one", "storage_gb") == 3

    await eventually(delivered)
    async with sidecar.session.get(f"{daemon.url}/v1/usage/events/tx-1", headers=AUTH) as response:
        body = await response.json()
    assert response.status == 200 and body["event"]["properties"] == {"gb": 3}
    assert body["event"]["external_customer_id"] == "t_one" and body["event"]["value"] == 3


async def test_daemon_down_then_back_drains_exactly_once(
    tmp_path: Any, make_sidecar: SidecarFactory, unused_tcp_port: int
) -> None:
    first = await start_daemon(tmp_path, unused_tcp_port)
    sidecar = await make_sidecar(first.url)
    await first.server.close()  # the daemon goes away
    for _ in range(3):
        response = await sidecar.post("/v1/usage/batch", json={"events": events("t_down", 100)})
        assert response.status == 202  # still durable locally
    assert await used(sidecar, "t_down") == 300

    async def failing() -> bool:
        status = await usage_status(sidecar)
        return bool(status["delivery"]["failures"]) and status["backlog"] == 300

    await eventually(failing)
    back = await start_daemon(tmp_path, unused_tcp_port)  # same mirror file, same port
    try:

        async def drained() -> bool:
            return await back.used("t_down") == 300

        await eventually(drained)
        await eventually(lambda: settled(sidecar))
        delivery = (await usage_status(sidecar))["delivery"]
        assert delivery["delivered"] == 300 and delivery["duplicates"] == 0
        assert await used(sidecar, "t_down") == 300
    finally:
        await back.server.close()


async def test_concurrent_reserves_never_exceed_the_limit(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)  # t_res has no account: the free tier, exports limit 10
    await sidecar.post("/v1/usage", json={"event": events("t_res", 1, code="exports")[0]})

    async def reserve(quantity: int = 1) -> dict[str, Any]:
        body = {"tenant": "t_res", "feature": "exports", "quantity": quantity, "reserve": True}
        response = await sidecar.post("/v1/check", json=body)
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer

    answers = await asyncio.gather(*(reserve() for _ in range(60)))
    assert sum(a["allow"] for a in answers) == 9  # 1 plain event + 9 reserves: exactly the limit
    assert all(a["reservation"]["reserved"] == a["allow"] for a in answers)
    assert {a["reason"] for a in answers if not a["allow"]} == {"limit_exceeded"}
    assert await used(sidecar, "t_res", "exports") == 10

    async def daemon_agrees() -> bool:
        return await daemon.used("t_res", "exports") == 10

    await eventually(daemon_agrees)
    await eventually(lambda: settled(sidecar))
    assert (await reserve())["allow"] is False and await used(sidecar, "t_res", "exports") == 10


async def test_reserve_of_a_sum_metric_records_its_quantity(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)  # free tier: storage_gb limit 1
    body = {"tenant": "t_gb", "feature": "storage_gb", "quantity": 2, "reserve": True}
    too_much = await (await sidecar.post("/v1/check", json=body)).json()
    fits = await (await sidecar.post("/v1/check", json={**body, "quantity": 1})).json()
    assert (too_much["allow"], fits["allow"]) == (False, True)

    async def recorded() -> bool:
        return await daemon.used("t_gb", "storage_gb") == 1

    await eventually(recorded)


async def test_reserve_is_idempotent_by_transaction_id(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)
    body = {
        "tenant": "t_idem",
        "feature": "exports",
        "quantity": 10,
        "reserve": True,
        "transaction_id": "job-7",
    }
    first = await (await sidecar.post("/v1/check", json=body)).json()
    again = await (await sidecar.post("/v1/check", json=body)).json()
    assert first["allow"] and first["reservation"] == {
        "transaction_id": "job-7",
        "reserved": True,
        "replayed": False,
    }
    assert again["allow"] and again["reservation"]["replayed"] is True  # the limit is used up, by itself
    assert await used(sidecar, "t_idem", "exports") == 10
    plain = await (await sidecar.post("/v1/check", json={**body, "reserve": False})).json()
    assert plain["allow"] is False and "reservation" not in plain

    async def daemon_has_ten() -> bool:
        return await daemon.used("t_idem", "exports") == 10

    await eventually(daemon_has_ten)
