"""The daemon's usage ingest: idempotency, periods (rollover, late events), the change log, lookups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import DaemonServer
from tiergate.periods import calendar_month, rfc3339
from tiergate.sync_daemon.mirror.store import MirrorAccount

NOW = datetime.now(UTC).replace(microsecond=0)
P1 = (NOW - timedelta(days=40), NOW - timedelta(days=10))
P2 = (P1[1], P1[1] + timedelta(days=30))


def event(tid: str, tenant: str = "t_pro", at: datetime | None = None, **extra: Any) -> dict[str, Any]:
    body = {"transaction_id": tid, "external_customer_id": tenant, "code": "api_calls", **extra}
    if at is not None:
        body["timestamp"] = at.timestamp()
    return body


async def post(daemon: DaemonServer, events: list[Any], headers: dict[str, str] = AUTH) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{daemon.url}/v1/usage/batch", json={"events": events}, headers=headers) as response,
    ):
        return response.status, await response.json()


async def get(daemon: DaemonServer, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(daemon.url + path, headers=AUTH) as response:
        return response.status, await response.json()


def pro(period: tuple[datetime, datetime]) -> MirrorAccount:
    return MirrorAccount(
        tenant="t_pro",
        tier="pro",
        status="active",
        current_period_start=period[0],
        current_period_end=period[1],
    )


async def test_a_replayed_batch_changes_nothing(daemon: DaemonServer) -> None:
    batch = [event(f"a{i}") for i in range(5)] + [event("a0")]
    status, first = await post(daemon, batch)
    assert status == 200 and [r["status"] for r in first["results"]] == ["ingested"] * 5 + ["duplicate"]
    seq = daemon.mirror.seq
    status, again = await post(daemon, batch)
    assert again["duplicate"] == 6 and again["ingested"] == 0 and again["seq"] == seq
    assert daemon.mirror.seq == seq  # no change logged for a replay
    assert await daemon.used("t_pro") == 5


async def test_each_counter_change_is_in_the_feed(daemon: DaemonServer) -> None:
    _, answer = await post(daemon, [event("f1"), event("f2"), event("f3", tenant="t_other")])
    status, feed = await get(daemon, "/v1/feed/changes?since=0")
    usage = [c for c in feed["changes"] if c["kind"] == "usage"]
    assert status == 200 and answer["seq"] == feed["last_seq"] == 2
    assert {(c["tenant"], c["usage"]["value"]) for c in usage} == {("t_pro", 2), ("t_other", 1)}


async def test_period_rollover_and_late_events(daemon: DaemonServer) -> None:
    await daemon.put(pro(P1))
    await post(
        daemon, [event("p1-a", at=P1[0] + timedelta(days=1)), event("p1-b", at=P1[0] + timedelta(days=2))]
    )
    await daemon.put(pro(P2))  # the renewal: a new period starts at zero
    await post(daemon, [event("p2-a", at=NOW)])
    assert (await daemon.usage("t_pro"))["usage"] == {"api_calls": 1}
    # a late event of the previous period counts there, not now
    await post(daemon, [event("late", at=P1[1] - timedelta(hours=1))])
    # a late event from before any period the daemon saw: the calendar month
    older = P1[0] - timedelta(days=3)
    await post(daemon, [event("older", at=older)])
    counters = {c["period_start"]: c["value"] for c in (await daemon.usage("t_pro"))["counters"]}
    assert counters == {rfc3339(P2[0]): 1, rfc3339(P1[0]): 3, rfc3339(calendar_month(older)[0]): 1}
    _, found = await get(daemon, "/v1/usage/events/late?external_customer_id=t_pro")
    assert found["event"]["period_start"] == rfc3339(P1[0])


async def test_free_tier_counts_per_calendar_month(daemon: DaemonServer) -> None:
    last_month = calendar_month(NOW)[0] - timedelta(days=1)
    await post(daemon, [event("now", tenant="t_free"), event("before", tenant="t_free", at=last_month)])
    body = await daemon.usage("t_free")
    assert body["period"]["start"] == rfc3339(calendar_month(NOW)[0]) and body["usage"] == {"api_calls": 1}
    assert len(body["counters"]) == 2


async def test_bad_events_are_rejected_one_by_one(daemon: DaemonServer) -> None:
    status, answer = await post(daemon, [event("ok"), {**event("x"), "code": "nope"}, "junk"])
    assert status == 200 and [r["status"] for r in answer["results"]] == ["ingested", "rejected", "rejected"]
    assert answer["results"][1]["error"].startswith("events[1].code")
    assert await daemon.used("t_pro") == 1


async def test_whole_request_errors(daemon: DaemonServer) -> None:
    assert (await post(daemon, [event("a")], headers={}))[0] == 401
    status, body = await post(daemon, [event(f"n{i}") for i in range(1001)])
    assert status == 400 and body["error"]["field"] == "events"
    status, body = await get(daemon, "/v1/usage/events/never-seen")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_an_unbounded_event_is_rejected_alone(daemon: DaemonServer) -> None:
    """Nested far too deep: one rejected result, never a 503 failing the others' group commit."""
    deep: dict[str, Any] = {}
    for _ in range(200):
        deep = {"a": deep}
    status, body = await post(daemon, [event("ok-1"), event("deep-1", properties=deep), event("ok-2")])
    assert status == 200 and [r["status"] for r in body["results"]] == ["ingested", "rejected", "ingested"]
    assert "properties" in body["results"][1]["error"]
