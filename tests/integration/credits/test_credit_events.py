"""Outbound credit events delivered to a real receiver: granted, balance_low once per crossing,
depleted, expired; each from the transaction that moved the balance (both mirror backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import MirrorBackend
from tests.integration.credits.conftest import PLANS
from tests.integration.daemon.conftest import AUTH as FEED_AUTH
from tests.integration.outbound.conftest import (
    API,
    all_delivered,
    daemon,
    free_port,
    hook_url,
    receiving,
    until,
)
from tiergate.catalog import load_catalog
from tiergate.sync_daemon.credits.jobs import sweep
from tiergate.sync_daemon.state import MIRROR


def images(tenant: str, n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {"transaction_id": f"{prefix}-{i}", "external_customer_id": tenant, "code": "images"}
        for i in range(n)
    ]


async def test_balance_low_once_per_crossing_then_depleted_and_expired(
    aiohttp_client: Any, mirror_backend: MirrorBackend
) -> None:
    port = free_port()
    async with receiving(port) as receiver:
        client = await daemon(
            aiohttp_client, mirror_backend.path, hook_url(port), plans=PLANS, **mirror_backend.settings()
        )
        grant = {"credit_type": "ai_credits", "amount": 120, "reason": "pilot"}
        assert (await client.post("/v1/tenants/t_1/credits/grants", json=grant, headers=API)).status == 201

        async def use(n: int, prefix: str) -> None:
            body = {"events": images("t_1", n, prefix)}
            response = await client.post("/v1/usage/batch", json=body, headers=FEED_AUTH)
            assert response.status == 200

        await use(5, "a")  # 120 -> 110: above both thresholds (100, 10)
        await use(6, "b")  # 110 -> 98: crosses 100
        await use(1, "c")  # 98 -> 96: below already, no second event
        await use(1, "c")  # a replay: no debit, no event
        await use(43, "d")  # 96 -> 10: not below 10 yet
        await use(5, "e")  # 10 -> 8 (crosses 10), ... 2 -> 0 (depleted)
        await use(1, "f")  # 0 -> -2: a debt; no second depletion
        expiring = {
            **grant,
            "amount": 7,
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        assert (await client.post("/v1/tenants/t_2/credits/grants", json=expiring, headers=API)).status == 201
        await sweep(
            client.app[MIRROR], load_catalog(PLANS), [hook_url(port)], datetime.now(UTC) + timedelta(days=2)
        )
        await until(lambda: all_delivered(client))
        await until(lambda: len(receiver.events()) == 7)
        kinds = [(e["type"], e["data"].get("threshold"), e["data"].get("balance")) for e in receiver.events()]
        assert sorted(kinds, key=str) == sorted(
            [
                ("credits.granted", None, None),
                ("credits.balance_low", 100, 98),
                ("credits.balance_low", 10, 8),
                ("credits.depleted", None, 0),
                ("credits.granted", None, None),
                ("credits.expired", None, 0),
                ("credits.depleted", None, 0),  # t_2's expiry took its balance to 0
            ],
            key=str,
        )
        expired = next(e for e in receiver.events() if e["type"] == "credits.expired")
        assert expired["data"]["expired"] == 7 and expired["data"]["tenant"] == "t_2"
