"""Holds through the sidecar's HTTP API: a hold counts from its creation until it is settled (its
usage events take its place), released or expired; every step is idempotent; bad input is a 400
that holds nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarFactory,
    eventually,
    usage_status,
    used,
)
from tiergate.sidecar.api.check_listener import CHECK_LISTENER_PORT
from tiergate.sidecar.api.holds import HOLDS
from tiergate.sidecar.local import LocalDecisions

SidecarClient = Any
TENANT = "t_hold"


async def call(
    sidecar: SidecarClient, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    response = await sidecar.request(method, path, json=body)
    answer: dict[str, Any] = await response.json()
    return response.status, answer


async def hold(sidecar: SidecarClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    return await call(sidecar, "POST", "/v1/holds", {"tenant": TENANT, "feature": "exports", **fields})


async def settle(
    sidecar: SidecarClient, hold_id: str, quantity: int, **more: Any
) -> tuple[int, dict[str, Any]]:
    return await call(sidecar, "POST", f"/v1/holds/{hold_id}/settle", {"quantity": quantity, **more})


async def test_a_hold_counts_from_creation_and_settles_into_usage(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)  # free tier: exports limit 10 (a count metric)
    assert await used(sidecar, TENANT, "exports") == 0  # an answer now cached
    status, created = await hold(sidecar, quantity=4, transaction_id="job-1")
    assert status == 201 and created["allow"] is True and created["state"] == "held"
    assert created["hold_id"].startswith("h_") and created["held"] == 4 and created["expires_at"]
    assert await used(sidecar, TENANT, "exports") == 4  # the cached answer was dropped
    status, done = await settle(sidecar, created["hold_id"], 3)
    assert status == 200 and done["state"] == "settled" and done["settled_quantity"] == 3
    assert done["replayed"] is False
    assert await used(sidecar, TENANT, "exports") == 3
    assert (await usage_status(sidecar))["backlog"] == 3  # three events: job-1, job-1/2, job-1/3
    again = await settle(sidecar, created["hold_id"], 3)
    assert again[0] == 200 and again[1]["replayed"] is True
    other = await settle(sidecar, created["hold_id"], 2)
    assert other[0] == 409 and other[1]["error"]["field"] == "hold_id"
    assert await used(sidecar, TENANT, "exports") == 3


async def test_a_hold_that_does_not_fit_is_the_deny_answer_and_holds_nothing(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar(None)
    status, first = await hold(sidecar, quantity=8)
    assert status == 201
    status, denied = await hold(sidecar, quantity=3)
    assert status == 200 and denied["allow"] is False and denied["reason"] == "limit_exceeded"
    assert denied["hold_id"] is None
    assert await used(sidecar, TENANT, "exports") == 8
    status, released = await call(sidecar, "DELETE", f"/v1/holds/{first['hold_id']}")
    assert status == 200 and released["state"] == "released" and released["replayed"] is False
    assert await used(sidecar, TENANT, "exports") == 0
    assert (await call(sidecar, "DELETE", f"/v1/holds/{first['hold_id']}"))[1]["replayed"] is True
    assert (await settle(sidecar, first["hold_id"], 1))[0] == 409
    assert (await hold(sidecar, quantity=3))[0] == 201


async def test_the_same_transaction_id_is_the_same_hold(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    answers = await asyncio.gather(*(hold(sidecar, quantity=2, transaction_id="same") for _ in range(5)))
    assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 201]
    assert len({body["hold_id"] for _, body in answers}) == 1
    assert await used(sidecar, TENANT, "exports") == 2
    status, conflict = await hold(sidecar, quantity=3, transaction_id="same")
    assert status == 409 and conflict["error"]["field"] == "transaction_id"
    await settle(sidecar, answers[0][1]["hold_id"], 2)
    status, replay = await hold(sidecar, quantity=2, transaction_id="same")  # after it settled
    assert status == 200 and replay["state"] == "settled" and replay["replayed"] is True
    assert await used(sidecar, TENANT, "exports") == 2


@pytest.mark.parametrize(
    ("overage", "asked", "status", "recorded"),
    [("reject", 6, 200, 6), ("reject", 11, 409, None), ("cap", 11, 200, 4), ("allow", 11, 200, 11)],
)
async def test_a_settle_beyond_the_hold_follows_its_overage_rule(
    make_sidecar: SidecarFactory, overage: str, asked: int, status: int, recorded: int | None
) -> None:
    sidecar = await make_sidecar(None)
    _, created = await hold(sidecar, quantity=4)
    answer = await settle(sidecar, created["hold_id"], asked, overage=overage)
    assert answer[0] == status
    if recorded is None:  # refused: the hold stays, still counted
        assert answer[1]["error"]["code"] == "overage_rejected"
        assert await used(sidecar, TENANT, "exports") == 4
        assert (await call(sidecar, "GET", f"/v1/holds/{created['hold_id']}"))[1]["state"] == "held"
    else:
        assert answer[1]["settled_quantity"] == recorded
        assert await used(sidecar, TENANT, "exports") == recorded


async def test_an_expired_hold_releases_itself_and_extend_pushes_expiry(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    _, short = await hold(sidecar, quantity=3, ttl_s=1)
    _, extended = await hold(sidecar, quantity=2, ttl_s=1)
    status, body = await call(sidecar, "POST", f"/v1/holds/{extended['hold_id']}/extend", {"ttl_s": 60})
    assert status == 200 and body["expires_at"] > extended["expires_at"]
    assert await used(sidecar, TENANT, "exports") == 5

    async def released() -> bool:
        return await used(sidecar, TENANT, "exports") == 2

    await eventually(released, within=10)
    status, body = await call(sidecar, "GET", f"/v1/holds/{short['hold_id']}")
    assert body["state"] == "expired"
    assert (await settle(sidecar, short["hold_id"], 1))[0] == 409
    assert (await call(sidecar, "POST", f"/v1/holds/{short['hold_id']}/extend", {"ttl_s": 5}))[0] == 409
    assert (await call(sidecar, "DELETE", f"/v1/holds/{short['hold_id']}"))[1]["replayed"] is True
    assert (await usage_status(sidecar))["holds"]["expired"] == 1
    metrics = await (await sidecar.get("/metrics")).text()
    assert 'tiergate_holds_ended_total{state="expired"} 1.0' in metrics
    assert "tiergate_holds_active 1.0" in metrics  # the extended one


async def test_concurrent_holds_never_exceed_the_limit(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)  # free: api_calls limit 1000, exports 10
    quantities = [1 + n % 7 for n in range(400)]
    answers = await asyncio.gather(
        *(
            hold(sidecar, feature="api_calls", quantity=q, transaction_id=f"c{n}")
            for n, q in enumerate(quantities)
        )
    )
    held = sum(q for q, (status, _) in zip(quantities, answers, strict=True) if status == 201)
    denied = [body for status, body in answers if status == 200]
    assert held <= 1000 and denied and all(not body["allow"] for body in denied)
    assert 1000 - held < 7  # denied only once no more fitted
    assert await used(sidecar, TENANT) == held
    # settling all at once with overage "allow" of one more each cannot be refused; "reject" is
    settles = await asyncio.gather(
        *(settle(sidecar, body["hold_id"], body["held"] + 1) for status, body in answers if status == 201)
    )
    assert {status for status, _ in settles} <= {200, 409}
    recorded = sum(body["settled_quantity"] for status, body in settles if status == 200)
    still_held = sum(body["held"] for (status, body), (s2, _) in
                     zip([a for a in answers if a[0] == 201], settles, strict=True) if s2 == 409)  # fmt: skip
    assert recorded + still_held <= 1000
    assert await used(sidecar, TENANT) == recorded + still_held


async def test_holds_survive_a_restart(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    _, kept = await hold(sidecar, quantity=4, transaction_id="kept")
    _, done = await hold(sidecar, quantity=3, transaction_id="done")
    await settle(sidecar, done["hold_id"], 2)
    await sidecar.close()
    again = await make_sidecar(None)  # the same outbox file
    assert await used(again, TENANT, "exports") == 6
    assert (await hold(again, quantity=4, transaction_id="kept"))[1]["hold_id"] == kept["hold_id"]
    assert (await settle(again, done["hold_id"], 2))[1]["replayed"] is True
    assert (await settle(again, kept["hold_id"], 4))[0] == 200
    assert await used(again, TENANT, "exports") == 6


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"feature": "exports"}, "tenant"),
        ({"tenant": TENANT}, "feature"),
        ({"tenant": TENANT, "feature": "exports", "quantity": 0}, "quantity"),
        ({"tenant": TENANT, "feature": "exports", "quantity": "2"}, "quantity"),
        ({"tenant": TENANT, "feature": "exports", "ttl_s": 86_401}, "ttl_s"),
        ({"tenant": TENANT, "feature": "exports", "ttl_s": 0}, "ttl_s"),
        ({"tenant": TENANT, "feature": "exports", "transaction_id": ""}, "transaction_id"),
        ({"tenant": TENANT, "feature": "exports", "transaction_id": "x" * 201}, "transaction_id"),
        ({"tenant": TENANT, "feature": "exports", "extra": 1}, "extra"),
        ({"tenant": TENANT, "feature": "sso"}, "feature"),  # not metered
        ({"tenant": TENANT, "feature": "seats"}, "feature"),  # a gauge
        ({"tenant": TENANT, "feature": "exports", "quantity": 1001}, "quantity"),  # events per count
    ],
)
async def test_a_bad_hold_is_a_400_naming_the_field_and_holds_nothing(
    make_sidecar: SidecarFactory, body: dict[str, Any], field: str
) -> None:
    sidecar = await make_sidecar(None)
    status, answer = await call(sidecar, "POST", "/v1/holds", body)
    assert status == 400 and answer["error"]["field"] == field, answer
    assert (await usage_status(sidecar))["holds"]["active"] == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/settle", {}, 400, "quantity"),
        ("/settle", {"quantity": -1}, 400, "quantity"),
        ("/settle", {"quantity": 1, "overage": "sometimes"}, 400, "overage"),
        ("/settle", {"quantity": 1.5}, 400, "quantity"),
        ("/extend", {"ttl_s": 86_401}, 400, "ttl_s"),
        ("/extend", {}, 400, "ttl_s"),
    ],
)
async def test_a_bad_settle_or_extend_is_a_400_and_changes_nothing(
    make_sidecar: SidecarFactory, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    sidecar = await make_sidecar(None)
    _, created = await hold(sidecar, quantity=2)
    answer = await call(sidecar, "POST", f"/v1/holds/{created['hold_id']}{path}", body)
    assert answer[0] == status and answer[1]["error"]["field"] == field
    assert (await call(sidecar, "GET", f"/v1/holds/{created['hold_id']}"))[1]["state"] == "held"
    assert await used(sidecar, TENANT, "exports") == 2


async def test_an_unknown_or_overlong_hold_id(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    assert (await settle(sidecar, "h_nope", 1))[0] == 404
    assert (await call(sidecar, "DELETE", "/v1/holds/h_nope"))[0] == 404
    assert (await call(sidecar, "GET", "/v1/holds/" + "h" * 65))[0] == 400


async def test_settled_usage_reaches_the_daemon_once(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url)
    created = [
        (await hold(sidecar, feature="api_calls", quantity=50, transaction_id=f"d{n}"))[1] for n in range(4)
    ]
    for body in created[:3]:
        await settle(sidecar, body["hold_id"], 30)
        await settle(sidecar, body["hold_id"], 30)  # a retried settle
    await eventually(lambda: settled_or_holding(sidecar))
    assert await daemon.used(TENANT) == 90
    assert await used(sidecar, TENANT) == 90 + 50  # the fourth is still held


async def settled_or_holding(sidecar: SidecarClient) -> bool:
    status = await usage_status(sidecar)
    return bool(status["backlog"] == 0 and status["pending"]["awaiting_feed"] == 0)


async def test_the_check_listeners_answers_follow_holds(make_sidecar: SidecarFactory) -> None:
    """The check listener's materialised answers are dropped when a hold is created, settled or
    released, like the main port's (they read the same pending usage)."""
    sidecar = await make_sidecar(None, check_port=0)
    url = f"http://127.0.0.1:{sidecar.app[CHECK_LISTENER_PORT]}/v1/check?tenant={TENANT}&feature=exports"
    async with aiohttp.ClientSession() as session:

        async def used_there() -> int:
            async with session.get(url) as response:
                return int((await response.json())["used"])

        for _ in range(3):  # hot: materialised
            assert await used_there() == 0
        _, first = await hold(sidecar, quantity=4)
        assert await used_there() == 4
        await settle(sidecar, first["hold_id"], 1)
        assert await used_there() == 1
        _, second = await hold(sidecar, quantity=5)
        assert await used_there() == 6
        await call(sidecar, "DELETE", f"/v1/holds/{second['hold_id']}")
        assert await used_there() == 1


async def test_local_decisions_in_the_app_count_the_sidecars_holds(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(None)
    _, held = await hold(sidecar, quantity=7)
    async with LocalDecisions(
        replica_path=tmp_path / "sidecar" / "replica.db",
        plans=tmp_path / "plans.yaml",
        policies=tmp_path / "policies",
    ) as local:
        assert (await local.check(TENANT, "exports", 4)).reason == "limit_exceeded"  # 7 held + 4 > 10
        await settle(sidecar, held["hold_id"], 2)
        assert (await local.check(TENANT, "exports", 4)).allow
        assert (await local.check(TENANT, "exports")).used == 2


async def test_an_id_taken_by_usage_refuses_the_hold_or_its_settle(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    event = {"transaction_id": "taken", "external_customer_id": TENANT, "code": "exports"}
    assert (await call(sidecar, "POST", "/v1/usage", {"event": event}))[0] == 202
    status, refused = await hold(sidecar, quantity=2, transaction_id="taken")
    assert status == 409 and refused["error"]["field"] == "transaction_id"
    _, held = await hold(sidecar, quantity=2, transaction_id="late")
    late = {**event, "transaction_id": "late"}  # recorded by someone else after the hold was made
    assert (await call(sidecar, "POST", "/v1/usage", {"event": late}))[0] == 202
    status, refused = await settle(sidecar, held["hold_id"], 1)
    assert status == 409 and refused["error"]["field"] == "transaction_id"
    assert (await call(sidecar, "GET", f"/v1/holds/{held['hold_id']}"))[1]["state"] == "held"
    assert await used(sidecar, TENANT, "exports") == 1 + 2 + 1  # nothing settled, nothing lost
    assert (await usage_status(sidecar))["backlog"] == 2


async def test_shutdown_right_after_a_hold_wakes_the_sweeper_does_not_hang(
    make_sidecar: SidecarFactory,
) -> None:
    """A cancellation that meets the sweeper's wake-up still stops it (asyncio.wait_for on 3.11
    would swallow it, and the sidecar's shutdown would wait forever)."""
    sidecar = await make_sidecar(None)
    holds = sidecar.app[HOLDS]
    await holds.create(TENANT, "exports", 1, 300, None)  # wakes the sweeper, in this very step
    await asyncio.wait_for(holds.close(), 5)
