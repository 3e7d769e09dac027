"""A repair by reconciliation sends `entitlements.changed` like a webhook would, exactly once.

Stripe is localstripe (a real separate process) and no webhook is registered with it: the
daemon only learns of each change when reconciliation lists the subscriptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from tests.integration.daemon.conftest import localstripe, localstripe_server  # noqa: F401 - fixtures
from tests.integration.outbound.conftest import (
    all_delivered,
    daemon,
    deliveries,
    free_port,
    hook_url,
    receiving,
    until,
)
from tests.localstripe_api import plans_client, subscribe
from tiergate.sync_daemon.state import RECONCILER


@pytest.fixture
async def stripe_api(localstripe: str) -> AsyncIterator[stripe.StripeClient]:  # noqa: F811 - the fixture
    async with plans_client(localstripe, "sk_test_outbound", "tiergate") as client:
        yield client


async def test_a_repair_sends_one_signed_event_and_a_second_run_sends_nothing(
    aiohttp_client: Any,
    tmp_path: Path,
    localstripe: str,  # noqa: F811 - the fixture
    stripe_api: stripe.StripeClient,
) -> None:
    port = free_port()
    async with receiving(port) as receiver:
        client = await daemon(aiohttp_client, tmp_path / "mirror.db", hook_url(port), stripe_base=localstripe)
        reconciler = client.app[RECONCILER]
        sub = await subscribe(stripe_api, "t_acme", "starter_month", quantity=2)
        first = await reconciler.run()  # a subscription the daemon never heard of: a new account
        assert (first.ok, first.repairs) == (True, 1)
        await until(lambda: len(receiver.received) == 1)

        # Changed in Stripe only (an upgrade and seats); no webhook reaches the daemon.
        item = sub["items"]["data"][0]["id"]
        await stripe_api.v1.subscriptions.update_async(
            sub.id, {"items": [{"id": item, "plan": "pro_month", "quantity": 5}]}
        )
        second = await reconciler.run()
        assert (second.ok, second.repairs) == (True, 1) and "tier" in second.drift
        await until(lambda: len(receiver.received) == 2)

        third = await reconciler.run()  # nothing differs any more: nothing is repaired or sent
        assert (third.ok, third.repairs) == (True, 0)
        await until(lambda: all_delivered(client))  # marked once the receiver answered
        rows = await deliveries(client)
        assert [row["status"] for row in rows] == ["delivered", "delivered"]

        created, upgraded = receiver.events()  # each verified with tiergate.webhook_signature.verify
        assert {row["event_id"] for row in rows} == {upgraded["id"], created["id"]}  # one delivery each
        assert created["type"] == upgraded["type"] == "entitlements.changed"
        assert created["data"]["before"] is None
        assert (created["data"]["after"]["tier"], created["data"]["after"]["quantity"]) == ("starter", 2)
        data = upgraded["data"]
        assert data["tenant"] == "t_acme"
        assert (data["before"]["tier"], data["before"]["quantity"]) == ("starter", 2)
        before, after = data["before"]["features"], data["after"].pop("features")
        assert (before["sso"], before["seats"], before["storage_gb"]) == (False, {"limit": 2}, {"limit": 10})
        assert (after["sso"], after["seats"], after["storage_gb"]) == (True, {"limit": 5}, {"limit": 100})
        assert data["after"] == {
            "tier": "pro",
            "status": "active",
            "quantity": 5,
            "addons": {},
            "cancel_at_period_end": False,
        }
        cause = data["cause"]
        assert (cause["source"], cause["subscription"]) == ("reconcile", sub.id)
        assert cause["reconcile_started_at"] == second.started_at
        assert {"tier", "quantity"} <= set(cause["repaired"])
        assert len(receiver.received) == 2
