"""GET /v1/usage/events on the daemon: filters, pages that lose and repeat nothing, bad parameters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from tests.integration.usage.conftest import DaemonServer
from tests.integration.usage.test_daemon_ingest import NOW, event, get, post
from tiergate.periods import rfc3339


async def pages(daemon: DaemonServer, query: str) -> list[list[str]]:
    """Every page of the listing, as transaction ids, following next_cursor to the end."""
    seen: list[list[str]] = []
    path = f"/v1/usage/events?{query}"
    while True:
        status, body = await get(daemon, path)
        assert status == 200, body
        seen.append([e["transaction_id"] for e in body["events"]])
        if body["next_cursor"] is None:
            return seen
        path = f"/v1/usage/events?{query}&cursor={body['next_cursor']}"


async def test_listing_filters_and_pages(daemon: DaemonServer) -> None:
    old = NOW - timedelta(days=2)
    await post(daemon, [event(f"a{i}") for i in range(5)] + [event("other", tenant="t_x")])
    await post(daemon, [event("old", at=old), event("gb", code="storage_gb", properties={"gb": 2})])
    assert await pages(daemon, "tenant=t_pro&limit=2") == [["a0", "a1"], ["a2", "a3"], ["a4", "old"], ["gb"]]
    assert await pages(daemon, "code=storage_gb") == [["gb"]]
    since = rfc3339(NOW - timedelta(days=1))
    recent = [tid for page in await pages(daemon, f"tenant=t_pro&from={since}") for tid in page]
    assert recent == ["a0", "a1", "a2", "a3", "a4", "gb"]
    until = rfc3339(NOW - timedelta(days=1))
    assert await pages(daemon, f"to={until}") == [["old"]]
    _, body = await get(daemon, "/v1/usage/events?code=storage_gb")
    listed = body["events"][0]
    assert listed["properties"] == {"gb": 2} and listed["tenant"] == "t_pro" and listed["value"] == 2


async def test_a_page_boundary_survives_new_events(daemon: DaemonServer) -> None:
    await post(daemon, [event(f"b{i}") for i in range(3)])
    _, first = await get(daemon, "/v1/usage/events?limit=2")
    await post(daemon, [event("late-arrival")])
    _, second = await get(daemon, f"/v1/usage/events?limit=2&cursor={first['next_cursor']}")
    assert [e["transaction_id"] for e in first["events"] + second["events"]] == [
        "b0",
        "b1",
        "b2",
        "late-arrival",
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=bm9wZTox", "cursor"),  # base64 of another kind of cursor
        ("from=yesterday", "from"),
        ("from=2026-01-01T00:00:00", "from"),  # no offset
        ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("tenant=", "tenant"),
        ("page=2", "page"),
    ],
)
async def test_bad_parameters_are_400_naming_them(daemon: DaemonServer, query: str, field: str) -> None:
    status, body = await get(daemon, f"/v1/usage/events?{query}")
    assert status == 400 and body["error"]["field"] == field, body


async def test_listing_needs_the_token(daemon: DaemonServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/v1/usage/events") as response:
        body: Any = await response.json()
    assert response.status == 401 and body["error"]["code"]
