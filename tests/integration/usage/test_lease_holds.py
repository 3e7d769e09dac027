"""Holds draw from quota leases (issues 24 and 25, docs/adr/0045): 4 real sidecar processes follow
a real daemon; a leased metric's holds across the pods never hold more than the limit, a released
hold's units serve the next hold, units held longer than the lease's TTL are not freed by the
daemon, and every settle is counted exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.usage.conftest import eventually
from tests.integration.usage.test_leases import (
    LIMIT,
    SIDECARS,
    Sidecar,
    all_ready,
    counted,
    daemons,
    leased_catalog,
    sidecars_following,
)
from tiergate.sidecar.leases.holder import RENEW_EVERY_S

HOLDS = 400
IDLE_RELEASE_S = RENEW_EVERY_S * 5  # a lease unused this long is released (tiergate/sidecar/leases)


async def hold(session: aiohttp.ClientSession, sidecar: Sidecar, tenant: str, tid: str) -> dict[str, Any]:
    body = {"tenant": tenant, "feature": "exports", "quantity": 1, "transaction_id": tid}
    async with session.post(sidecar.url + "/v1/holds", json=body) as response:
        assert response.status in (200, 201), await response.text()
        answer: dict[str, Any] = await response.json()
        answer["sidecar"] = sidecar
        return answer


async def burst(
    session: aiohttp.ClientSession, sidecars: list[Sidecar], tenant: str, prefix: str, n: int
) -> list[dict[str, Any]]:
    return await asyncio.gather(
        *(hold(session, sidecars[i % len(sidecars)], tenant, f"{prefix}-{i}") for i in range(n))
    )


def granted(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in answers if a["hold_id"] is not None]


async def end(session: aiohttp.ClientSession, answer: dict[str, Any], settle: int | None) -> dict[str, Any]:
    url = f"{answer['sidecar'].url}/v1/holds/{answer['hold_id']}"
    call = session.delete(url) if settle is None else session.post(url + "/settle", json={"quantity": settle})
    async with call as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def _counts(daemon: Any, tenant: str, expected: int) -> bool:
    return await counted(daemon, tenant) == expected


@pytest.mark.slow
async def test_holds_across_pods_never_hold_more_than_the_limit_and_settle_once(tmp_path: Path) -> None:
    plans = leased_catalog(tmp_path)
    ttl_s = 4.0
    async with (
        daemons(tmp_path, None, 1, plans, lease_ttl_s=ttl_s) as (daemon,),
        sidecars_following(tmp_path, [daemon.url], plans) as sidecars,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session,
    ):
        await all_ready(session, sidecars)
        tenant = "t_lease_holds"
        first = await burst(session, sidecars, tenant, "a", HOLDS)
        held = granted(first)
        reasons = Counter(a["reason"] for a in first if a["hold_id"] is None)
        assert len(held) <= LIMIT, reasons
        assert set(reasons) <= {"quota_unavailable", "limit_exceeded"}
        # Held past the point where an idle lease is given back, and then past the lease's TTL: the
        # sidecars renew the leases their holds drew from, so the daemon frees none of those units.
        await asyncio.sleep(IDLE_RELEASE_S + ttl_s * 2)
        late = granted(await burst(session, sidecars, tenant, "b", HOLDS))
        assert len(held) + len(late) <= LIMIT
        held += late
        # Released holds' units go back into their pod's lease: that pod's next holds get them.
        victim = sidecars[0]
        mine = [a for a in held if a["sidecar"] is victim][:10]
        for answer in mine:
            assert (await end(session, answer, None))["state"] == "released"
        held = [a for a in held if a not in mine]
        again = granted(await burst(session, [victim], tenant, "c", len(mine)))
        assert len(again) == len(mine)  # no refill needed: the released units were in the lease
        held += again
        assert len(held) <= LIMIT
        # Every remaining hold settles 1; a second settle of each is a replay: counted once.
        for answer in held:
            assert (await end(session, answer, 1))["state"] == "settled"
        for answer in held[:20]:
            assert (await end(session, answer, 1))["replayed"] is True
        await eventually(lambda: _counts(daemon, tenant, len(held)))
        # The settled units were acknowledged: what is left of the limit can be held again.
        more = granted(await burst(session, sidecars, tenant, "d", HOLDS))
        assert len(held) + len(more) <= LIMIT
        await asyncio.sleep(0.5)
        assert await counted(daemon, tenant) == len(held)  # and stays: nothing counted twice


@pytest.mark.slow
async def test_expired_holds_give_their_units_back(tmp_path: Path) -> None:
    """Holds that end without usage return their units to their pods' leases: after they expire,
    as much can be held again across the pods, and what is then settled is counted once."""
    plans = leased_catalog(tmp_path)
    async with (
        daemons(tmp_path, None, 1, plans) as (daemon,),
        sidecars_following(tmp_path, [daemon.url], plans) as sidecars,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session,
    ):
        await all_ready(session, sidecars)
        tenant = "t_lease_hold_expiry"
        body = {"tenant": tenant, "feature": "exports", "quantity": 1, "ttl_s": 1}
        answers = await asyncio.gather(
            *(
                _post(session, sidecars[i % SIDECARS].url + "/v1/holds", {**body, "transaction_id": f"e-{i}"})
                for i in range(HOLDS)
            )
        )
        first = [a for a in answers if a["hold_id"] is not None]
        assert 0 < len(first) <= LIMIT
        await asyncio.sleep(1.5)  # all expired: nothing recorded
        second = granted(await burst(session, sidecars, tenant, "after", HOLDS))
        assert len(second) <= LIMIT
        assert len(second) >= len(first)  # the expired holds' units came back into the leases
        for answer in second:
            await end(session, answer, 1)
        await eventually(lambda: _counts(daemon, tenant, len(second)))


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as response:
        assert response.status in (200, 201), await response.text()
        answer: dict[str, Any] = await response.json()
        return answer
