"""Hostile input at the daemon is a clean 4xx naming the problem: never a 500, never a hang."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from tests.integration.daemon.conftest import AUTH, FEED_TOKEN, Daemon, make_settings
from tests.stripe_payloads import subscription_event


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=9223372036854775808", "since"),
        ("since=-1", "since"),
        ("since=0&wait=nan", "wait"),
        ("since=0&wait=inf", "wait"),
        ("since=0&wait=-1", "wait"),
        ("since=1e400", "since"),
    ],
)
async def test_feed_query_numbers_are_bounded(daemon: Daemon, query: str, field: str) -> None:
    async with asyncio.timeout(5):  # `wait=nan` once waited for the next change, however long
        response = await daemon.client.get(f"/v1/feed/changes?{query}", headers=AUTH)
    body = await response.json()
    assert response.status == 400 and body["error"]["field"] == field, body


@pytest.mark.parametrize("created", ["1700000000", 1.5, None, True, [1]])
async def test_a_signed_event_with_a_bad_created_is_refused(daemon: Daemon, created: Any) -> None:
    event = subscription_event("customer.subscription.created")
    event["created"] = created
    status, body = await daemon.post(event)
    assert status == 400 and body["error"]["field"] == "created", body


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer    ", "Basic " + FEED_TOKEN, FEED_TOKEN])
async def test_an_empty_or_malformed_bearer_opens_nothing(daemon: Daemon, header: str) -> None:
    response = await daemon.client.get("/v1/feed/snapshot", headers={"Authorization": header})
    assert response.status == 401


@pytest.mark.parametrize("token", ["", "       ", " , "])
def test_an_empty_feed_token_is_refused_at_start(tmp_path: Any, token: str) -> None:
    with pytest.raises(ValidationError, match="feed_token"):
        make_settings(tmp_path / "mirror.db", "http://127.0.0.1:9", feed_token=token)
