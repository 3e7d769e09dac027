"""The replica feed: snapshot, long-poll changes, retention gaps, the bearer token, the error shape."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from tests.integration.daemon.conftest import AUTH, Daemon
from tests.stripe_payloads import subscription_event
from tiergate.models import Account
from tiergate.sidecar.replica.follower import _parse_changes

CREATED = "customer.subscription.created"


async def _snapshot(daemon: Daemon) -> list[dict[str, Any]]:
    response = await daemon.client.get("/v1/feed/snapshot", headers=AUTH)
    assert response.status == 200 and response.content_type == "application/x-ndjson"
    return [json.loads(line) for line in (await response.text()).splitlines()]


async def _changes(daemon: Daemon, since: int, wait: float = 0) -> tuple[int, dict[str, Any]]:
    response = await daemon.client.get(f"/v1/feed/changes?since={since}&wait={wait}", headers=AUTH)
    return response.status, await response.json()


async def test_snapshot_lines(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED, tenant="a"))
    await daemon.post(subscription_event(CREATED, tenant="b", event_id="evt_b", id="sub_b"))
    lines = await _snapshot(daemon)
    assert lines[0]["type"] == "snapshot" and lines[0]["seq"] == 2 and lines[0]["data_as_of"].endswith("Z")
    accounts = [Account.model_validate(line["account"]) for line in lines[1:-1]]
    assert [a.tenant for a in accounts] == ["a", "b"] and accounts[0].tier == "pro"
    assert lines[-1] == {"type": "end", "accounts": 2, "usage": 0, "overrides": 0, "credits": 0}


async def test_changes_match_the_follower_contract(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    status, body = await _changes(daemon, 0)
    assert status == 200
    changes, last_seq, _ = _parse_changes(body)  # the sidecar's own parser accepts it
    assert last_seq == 1 and changes[0].account is not None and changes[0].account.tenant == "t_alice"
    assert set(body["changes"][0]) == {"seq", "kind", "op", "tenant", "account"}


async def test_long_poll_returns_at_once_when_changes_exist(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    # Under the 30 s wait: an answer in time can only come from the change, not from the wait
    # running out; generous for a loaded runner.
    status, body = await asyncio.wait_for(_changes(daemon, 0, wait=30), timeout=25)
    assert status == 200 and [c["seq"] for c in body["changes"]] == [1]


async def test_long_poll_waits_for_the_next_commit(daemon: Daemon) -> None:
    poll = asyncio.create_task(_changes(daemon, 0, wait=30))
    await asyncio.sleep(0.2)
    assert not poll.done()  # nothing to say yet: it is waiting, not answering empty
    await daemon.post(subscription_event(CREATED))
    status, body = await asyncio.wait_for(poll, timeout=25)  # woken by the commit, not the 30 s wait
    assert status == 200 and body["last_seq"] == 1 and body["changes"][0]["tenant"] == "t_alice"


async def test_long_poll_times_out_empty(daemon: Daemon) -> None:
    status, body = await _changes(daemon, 0, wait=0.1)
    assert (status, body["changes"], body["last_seq"]) == (200, [], 0)


async def test_trimmed_log_is_a_410_gap(daemon: Daemon) -> None:
    for n in range(3):
        await daemon.post(
            subscription_event(CREATED, event_id=f"evt_{n}", created=1_767_225_601 + n, quantity=n + 1)
        )
    await daemon.mirror.trim_changes(keep=1, max_age=timedelta(days=1))
    assert (await _changes(daemon, 2))[0] == 200
    status, body = await _changes(daemon, 1)
    assert status == 410 and body["error"]["code"] == "feed_gap"
    assert (await _changes(daemon, 99))[0] == 410  # ahead of the log: another mirror's history


@pytest.mark.parametrize("path", ["/v1/feed/snapshot", "/v1/feed/changes?since=0", "/v1/status"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic " + "x" * 10])
async def test_token_required(daemon: Daemon, path: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = await daemon.client.get(path, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/feed/changes", 400, "bad_request"),
        ("/v1/feed/changes?since=abc", 400, "bad_request"),
        ("/v1/feed/changes?since=-1", 400, "bad_request"),
        ("/v1/feed/changes?since=0&wait=soon", 400, "bad_request"),
        ("/v1/nowhere", 404, "not_found"),
    ],
)
async def test_one_error_shape(daemon: Daemon, path: str, status: int, code: str) -> None:
    response = await daemon.client.get(path, headers=AUTH)
    assert response.status == status
    body = await response.json()
    assert set(body["error"]) == {"code", "message", "field"} and body["error"]["code"] == code


async def test_a_repeated_query_parameter_is_a_400(daemon: Daemon) -> None:
    response = await daemon.client.get("/v1/feed/changes?since=0&since=5&wait=0", headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("bad_request", "since")
    assert "['0', '5']" in error["message"]
