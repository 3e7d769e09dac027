"""Holds of a credit-priced feature (issue 24): a sidecar following a real daemon (each mirror
backend) with a credit balance. A hold takes its credits from the balance at once, through the
sidecar's pending usage (never a second time through a separate hook); a release gives them back;
a settle is debited exactly once at the daemon."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.integration.credits.conftest import API_TOKEN, PLANS
from tests.integration.credits.test_sidecar_credits import check, credits_sidecar, grant
from tests.integration.usage.conftest import SidecarClient, eventually, start_daemon, usage_status
from tiergate.sync_daemon.credits.ledger import ledger_page

TOKENS = 1000  # a hold of 1,000 gpt4_tokens costs 3 credits on the free tier (0.003 each)


async def hold(sidecar: SidecarClient, tenant: str, tid: str, quantity: int = TOKENS) -> dict[str, Any]:
    body = {"tenant": tenant, "feature": "gpt4_tokens", "quantity": quantity, "transaction_id": tid}
    response = await sidecar.post("/v1/holds", json=body)
    assert response.status in (200, 201), await response.text()
    answer: dict[str, Any] = await response.json()
    assert (response.status == 201) == answer["allow"] == (answer["hold_id"] is not None)
    return answer


async def delivered(sidecar: SidecarClient) -> bool:
    """Every usage event delivered and in the replica (the active holds stay pending)."""
    status = await usage_status(sidecar)
    return bool(status["backlog"] == 0 and status["pending"]["awaiting_feed"] == 0)


async def balance(sidecar: SidecarClient, tenant: str) -> Decimal:
    answer = await check(sidecar, tenant, "gpt4_tokens")
    return Decimal(str(answer["credits"]["balance"]))


async def test_holds_take_credits_once_give_them_back_and_settle_once(
    tmp_path: Path, mirror_backend: MirrorBackend, aiohttp_client: Any
) -> None:
    daemon = await start_daemon(tmp_path, backend=mirror_backend, plans=PLANS, api_token=SecretStr(API_TOKEN))
    try:
        sidecar = await credits_sidecar(aiohttp_client, tmp_path, daemon)
        await grant(daemon, "t_h", 10)

        async def has(expected: Decimal) -> bool:
            return await balance(sidecar, "t_h") == expected

        await eventually(lambda: has(Decimal(10)))
        # 20 concurrent holds of 3 credits against 10: exactly 3 fit, the others are denied.
        answers = await asyncio.gather(*(hold(sidecar, "t_h", f"h-{n}") for n in range(20)))
        held = [a for a in answers if a["allow"]]
        assert len(held) == 3
        assert {a["reason"] for a in answers if not a["allow"]} == {"insufficient_credits"}
        # A check's balance, and /v1/entitlements', count the active holds once: 10 - 9.
        assert await balance(sidecar, "t_h") == 1
        entitlements = await (await sidecar.get("/v1/entitlements/t_h")).json()
        assert entitlements["credits"]["ai_credits"]["balance"] == 1
        denied = await check(sidecar, "t_h", "gpt4_tokens", 334)  # 1.002 > 1
        assert (denied["allow"], denied["reason"]) == (False, "insufficient_credits")

        released = await sidecar.delete(f"/v1/holds/{held[0]['hold_id']}")
        assert released.status == 200
        assert await balance(sidecar, "t_h") == 4  # given back at once
        again = await hold(sidecar, "t_h", "h-again")
        assert again["allow"] and await balance(sidecar, "t_h") == 1

        settle = await sidecar.post(f"/v1/holds/{held[1]['hold_id']}/settle", json={"quantity": 500})
        assert settle.status == 200, await settle.text()
        # The hold's 3 credits leave and its usage's 1.5 enter in one step: 10 - 1.5 - 3 - 3.
        assert await balance(sidecar, "t_h") == Decimal("2.5")
        await eventually(lambda: delivered(sidecar))
        # The daemon debited the settle; the feed's balance replaces the pending count, not both.
        assert await balance(sidecar, "t_h") == Decimal("2.5")
        replay = await sidecar.post(f"/v1/holds/{held[1]['hold_id']}/settle", json={"quantity": 500})
        assert (await replay.json())["replayed"] is True
        for hold_id in (held[2]["hold_id"], again["hold_id"]):  # the others settle nothing
            assert (await sidecar.post(f"/v1/holds/{hold_id}/settle", json={"quantity": 0})).status == 200
        await eventually(lambda: delivered(sidecar))
        assert await balance(sidecar, "t_h") == Decimal("8.5")
        ledger = await daemon.mirror.read(lambda sql: ledger_page(sql, "t_h", 0, 10))
        assert [(e["kind"], Decimal(str(e["amount"]))) for e in ledger] == [
            ("grant", 10),
            ("debit", Decimal("-1.5")),
        ]  # exactly once, whatever was replayed
    finally:
        await daemon.server.close()


async def test_usage_of_an_earlier_period_takes_its_credits_until_the_daemon_counts_it(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """A balance belongs to no period: usage this sidecar accepted for an earlier period (a late
    event; likewise a hold made before the period's end) is taken from it as soon as accepted."""
    daemon = await start_daemon(tmp_path, plans=PLANS, api_token=SecretStr(API_TOKEN))
    try:
        sidecar = await credits_sidecar(aiohttp_client, tmp_path, daemon)
        await grant(daemon, "t_late", 10)

        async def has(expected: Decimal) -> bool:
            return await balance(sidecar, "t_late") == expected

        await eventually(lambda: has(Decimal(10)))
    finally:
        await daemon.server.close()  # down: what is accepted now stays pending in the sidecar
    late = time.time() - 40 * 86400  # in an earlier calendar month than now
    event = {
        "transaction_id": "late-1",
        "external_customer_id": "t_late",
        "code": "gpt4_tokens",
        "timestamp": late,
        "properties": {"tokens": 1000},
    }
    response = await sidecar.post("/v1/usage", json={"event": event})
    assert response.status in (200, 202), await response.text()
    assert await balance(sidecar, "t_late") == 7  # 1,000 x 0.003 taken at once
