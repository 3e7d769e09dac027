"""A sidecar following a real daemon (each mirror backend) decides credit-priced checks locally:
balance from the feed, less what it accepted and the daemon has not counted yet; never twice."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.integration.credits.conftest import API_TOKEN, PLANS
from tests.integration.credits.conftest import AUTH as API_AUTH
from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarClient,
    eventually,
    settled,
    sidecar_settings,
    start_daemon,
)
from tiergate.sidecar.app import create_app as create_sidecar
from tiergate.sync_daemon.credits.ledger import ledger_page

ROOT = Path(__file__).parents[3]


async def grant(daemon: DaemonServer, tenant: str, amount: int | str) -> dict[str, Any]:
    body = {"credit_type": "ai_credits", "amount": amount, "reason": "test"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{daemon.url}/v1/tenants/{tenant}/credits/grants", json=body, headers=API_AUTH
        ) as response,
    ):
        assert response.status == 201, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def check(sidecar: SidecarClient, tenant: str, feature: str, quantity: int = 1) -> dict[str, Any]:
    response = await sidecar.get(
        "/v1/check", params={"tenant": tenant, "feature": feature, "quantity": str(quantity)}
    )
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def use(sidecar: SidecarClient, tenant: str, code: str, n: int, prefix: str, **properties: Any) -> None:
    events = [
        {
            "transaction_id": f"{prefix}-{i}",
            "external_customer_id": tenant,
            "code": code,
            "properties": properties,
        }
        for i in range(n)
    ]
    response = await sidecar.post("/v1/usage/batch", json={"events": events})
    assert response.status in (200, 202), await response.text()


async def credits_sidecar(aiohttp_client: Any, tmp_path: Path, daemon: DaemonServer) -> SidecarClient:
    """A sidecar following `daemon` with the credits catalog and the shipped policies."""
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    settings = sidecar_settings(tmp_path, daemon.url, plans=PLANS, policies=policies)
    sidecar: SidecarClient = await aiohttp_client(create_sidecar(settings))

    async def ready() -> bool:
        return (await sidecar.get("/readyz")).status == 200

    await eventually(ready)
    return sidecar


async def test_a_check_draws_on_the_balance_and_counts_local_usage_once(
    tmp_path: Path, mirror_backend: MirrorBackend, aiohttp_client: Any
) -> None:
    daemon = await start_daemon(tmp_path, backend=mirror_backend, plans=PLANS, api_token=SecretStr(API_TOKEN))
    try:
        sidecar = await credits_sidecar(aiohttp_client, tmp_path, daemon)
        empty = await check(sidecar, "t_1", "images")
        assert (empty["allow"], empty["reason"]) == (False, "insufficient_credits")
        assert empty["credits"] == {"type": "ai_credits", "balance": 0, "cost": 2}
        await grant(daemon, "t_1", 5)

        async def has(balance: object) -> bool:
            return bool((await check(sidecar, "t_1", "images"))["credits"]["balance"] == balance)

        await eventually(lambda: has(5))
        assert (await check(sidecar, "t_1", "images", 3))["reason"] == "insufficient_credits"  # 6 > 5
        await use(sidecar, "t_1", "images", 2, "img")  # 4 credits, pending until the daemon counts them
        after = await check(sidecar, "t_1", "images")
        assert (after["allow"], after["credits"]["balance"]) == (False, 1)  # at once, before any delivery
        await eventually(lambda: settled(sidecar))
        # The daemon debited the same 4: the balance from the feed replaces the pending count, not both.
        settled_answer = await check(sidecar, "t_1", "images")
        assert (settled_answer["allow"], settled_answer["credits"]["balance"]) == (False, 1)
        tokens = await check(sidecar, "t_1", "gpt4_tokens", 300)  # 300 x 0.003 = 0.9 <= 1
        assert tokens["allow"] and tokens["credits"] == {"type": "ai_credits", "balance": 1, "cost": "0.9"}
        entitlements = await (await sidecar.get("/v1/entitlements/t_1")).json()
        assert entitlements["credits"] == {"ai_credits": {"balance": 1, "next_expiry": None}}
        assert entitlements["features"]["images"]["reason"] == "insufficient_credits"
        ledger = await daemon.mirror.read(lambda sql: ledger_page(sql, "t_1", 0, 10))
        assert [(e["kind"], e["amount"]) for e in ledger] == [("grant", 5), ("debit", -2), ("debit", -2)]
    finally:
        await daemon.server.close()
