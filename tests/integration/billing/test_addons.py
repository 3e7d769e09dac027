"""Add-ons and seats from Stripe: an extra subscription item raises a limit on a following sidecar;
seats are limited to the subscription's quantity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fake_stripe import fixture
from tests.integration.billing.conftest import Billing, decision, eventually, follower, subscription
from tests.stripe_payloads import signed


def with_items(sub: dict[str, Any], *items: tuple[str, str, int]) -> dict[str, Any]:
    """The subscription with extra items (item id, lookup key, quantity) after its tier's item."""
    for item_id, lookup_key, quantity in items:
        price = fixture("price", id=f"price_{lookup_key}", lookup_key=lookup_key)
        price["recurring"]["interval"] = "month"
        sub["items"]["data"].append(fixture("subscription_item", id=item_id, price=price, quantity=quantity))
    return sub


async def deliver(billing: Billing, sub: dict[str, Any], created: int) -> None:
    event = {
        "id": f"evt_addons_{created}",
        "object": "event",
        "type": "customer.subscription.updated",
        "created": created,
        "data": {"object": sub},
    }
    raw, headers = signed(event)
    response = await billing.client.post("/webhooks/stripe", data=raw, headers=headers)
    assert response.status == 200, await response.text()


async def test_an_addon_item_raises_the_limit_and_seats_follow_the_quantity(
    aiohttp_client: Any, tmp_path: Path, billing: Billing
) -> None:
    sidecar = await follower(aiohttp_client, tmp_path, billing.client)
    # pro x5 seats, two units of extra storage (+100 GB each), one audit pack, and an unknown item
    sub = with_items(
        subscription(lookup_key="pro_month", quantity=5),
        ("si_storage", "extra_storage_month", 2),
        ("si_audit", "audit_pack_month", 1),
        ("si_other", "something_else", 9),
    )
    await deliver(billing, sub, 1_780_000_100)
    account = await billing.account()
    assert account is not None and (account.tier, account.quantity) == ("pro", 5)
    assert account.addons == (("audit_pack", 1), ("extra_storage", 2))

    async def limit(feature: str, expected: int | None) -> bool:
        return bool((await decision(sidecar, "t_acme", feature))["limit"] == expected)

    await eventually(lambda: limit("storage_gb", 300))  # pro's 100 + 2 x 100
    assert (await decision(sidecar, "t_acme", "audit_log"))["allow"] is True  # pro lacks it; the pack adds it
    assert (await decision(sidecar, "t_acme", "seats"))["limit"] == 5  # bought 5 (pro caps at 25)
    entitlements = await (await sidecar.get("/v1/entitlements/t_acme")).json()
    assert entitlements["account"]["addons"] == {"audit_pack": 1, "extra_storage": 2}
    sources = {name: f["source"] for name, f in entitlements["features"].items()}
    assert (sources["storage_gb"], sources["audit_log"], sources["sso"]) == ("addon", "addon", "plan")

    # The add-on item is removed and seats go to 8: the limit drops back, seats follow.
    sub = subscription(lookup_key="pro_month", quantity=8)
    await deliver(billing, sub, 1_780_000_200)
    await eventually(lambda: limit("storage_gb", 100))
    assert (await decision(sidecar, "t_acme", "seats"))["limit"] == 8
    assert (await decision(sidecar, "t_acme", "audit_log"))["reason"] == "not_in_plan"
