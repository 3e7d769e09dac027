"""POST /v1/leases refuses what it cannot honour with a 4xx naming the field, and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import start_daemon
from tests.integration.usage.test_leases import LIMIT, leased_catalog


@pytest.fixture
async def daemon_url(tmp_path: Path) -> Any:
    running = await start_daemon(tmp_path, plans=leased_catalog(tmp_path))
    yield running.url
    await running.server.close()


async def post(url: str, body: object, headers: dict[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/leases", json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


GOOD = {"tenant": "t_req", "code": "exports", "holder": "h1", "want": 30, "need": 1, "rate": 1.0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": "api_calls"}, "code"),  # not leased in this catalog
        ({"code": "Exports!"}, "code"),
        ({"holder": "a b"}, "holder"),
        ({"want": -1}, "want"),
        ({"acked": 10**13}, "acked"),
        ({"rate": "fast"}, "rate"),
        ({"extra": 1}, "extra"),
        ({"tenant": ""}, "tenant"),
    ],
)
async def test_bad_requests_name_the_field_and_grant_nothing(
    daemon_url: str, change: dict[str, Any], field: str
) -> None:
    status, body = await post(daemon_url, {**GOOD, **change})
    assert status == 400
    assert body["error"]["field"] == field
    async with (
        aiohttp.ClientSession() as session,
        session.get(daemon_url + "/v1/leases/t_req", headers=AUTH) as r,
    ):
        assert (await r.json())["leases"] == []


async def test_without_the_feed_token_nothing_is_leased(daemon_url: str) -> None:
    status, _ = await post(daemon_url, GOOD, headers={})
    assert status == 401


async def test_grants_never_pass_the_limit_and_a_lost_answer_is_made_good(daemon_url: str) -> None:
    status, first = await post(daemon_url, {**GOOD, "want": 1000})
    assert status == 200 and first["limit"] == LIMIT and 1 <= first["granted"] <= LIMIT
    # The answer was "lost": the holder asks again and learns the cumulative grant.
    _, again = await post(daemon_url, {**GOOD, "want": 1000})
    others = [
        await post(daemon_url, {**GOOD, "holder": f"h{n}", "want": 1000, "need": 1}) for n in range(2, 40)
    ]
    granted = again["granted"] + sum(body["granted"] for _, body in others)
    assert again["granted"] >= first["granted"]
    assert granted == LIMIT  # every unit is leased once, to someone, and no more
    _, released = await post(daemon_url, {**GOOD, "want": 0, "release": True})
    assert released["granted"] == 0 and released["free"] == again["granted"]


async def test_the_daemon_shows_what_is_leased(daemon_url: str) -> None:
    status, answer = await post(daemon_url, GOOD)
    assert status == 200 and answer["granted"] >= 1
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.get(daemon_url + "/v1/status") as response:
            leases = (await response.json())["leases"]
        assert leases == {"live": 1, "units": answer["granted"]}
        async with session.get(daemon_url + "/v1/leases/t_req") as response:
            (lease,) = (await response.json())["leases"]
        assert lease["holder"] == "h1" and lease["holds"] == answer["granted"] and lease["expires_in_s"] > 0
        async with session.get(daemon_url + "/metrics") as response:
            assert 'tiergate_lease_exchanges_total{outcome="granted"} 1.0' in await response.text()
