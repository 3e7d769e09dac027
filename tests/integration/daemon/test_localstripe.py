"""Against localstripe (a real separate process): a lifecycle, real signed deliveries, reconciliation."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from tests.integration.daemon.conftest import make_settings, register_webhook
from tests.localstripe_api import plans_client, subscribe
from tiergate.sync_daemon.app import create_app, run_full_sync
from tiergate.sync_daemon.mirror.store import MirrorAccount
from tiergate.sync_daemon.state import METRICS, MIRROR, RECONCILER


@pytest.fixture
async def stripe_api(localstripe: str) -> AsyncIterator[stripe.StripeClient]:
    async with plans_client(localstripe, "sk_test_localstripe", "tiergate") as client:
        yield client


async def _stripe_state(api: stripe.StripeClient) -> dict[str, dict[str, Any]]:
    listing = await api.v1.subscriptions.list_async({"status": "all", "expand": ["data.customer"]})
    subs = [sub.to_dict() async for sub in listing.auto_paging_iter()]
    return {sub["customer"]["metadata"]["tenant_id"]: sub for sub in subs}


def _matches(account: MirrorAccount, sub: dict[str, Any]) -> None:
    assert account.subscription_id == sub["id"]
    assert (
        account.tier == {"starter_month": "starter", "pro_month": "pro", "pro_year": "pro"}[sub["plan"]["id"]]
    )
    assert account.status == sub["status"]
    assert account.quantity == sub["quantity"]
    assert account.cancel_at_period_end == sub["cancel_at_period_end"]
    assert account.current_period_end is not None
    assert int(account.current_period_end.timestamp()) == sub["current_period_end"]
    assert account.unmapped_price is False and account.needs_reconcile is False


async def test_lifecycle_then_reconcile_matches_stripe(
    aiohttp_client: Any, tmp_path: Path, localstripe: str, stripe_api: stripe.StripeClient
) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path / "mirror.db", localstripe)))
    register_webhook(localstripe, str(client.server.make_url("/webhooks/stripe")))
    before = await _event_ids(stripe_api)  # the catalog's events, sent before the daemon listened

    alice = await subscribe(stripe_api, "t_alice", "starter_month")
    item = alice["items"].data[0]
    await stripe_api.v1.subscriptions.update_async(  # plan change and seats
        alice.id,
        {"items": [{"id": item.id, "plan": "pro_year", "quantity": 5}]},
    )
    bob = await subscribe(stripe_api, "t_bob", "pro_month", quantity=2)
    await stripe_api.v1.subscriptions.update_async(bob.id, {"cancel_at_period_end": True})
    carol = await subscribe(stripe_api, "t_carol", "pro_month")
    await stripe_api.v1.subscriptions.cancel_async(carol.id)
    await subscribe(stripe_api, "t_dave", "pro_month", card="pm_card_chargeCustomerFail")

    # Real signed deliveries verify and apply: every one of them, before the reconcile compares.
    await _applied(client, await _event_ids(stripe_api) - before)
    summary = await client.app[RECONCILER].run()
    assert summary.ok and summary.subscriptions == 4 and summary.no_tenant == 0

    truth = await _stripe_state(stripe_api)
    mirror = {a.tenant: a for a in await client.app[MIRROR].accounts()}
    assert set(mirror) == set(truth) == {"t_alice", "t_bob", "t_carol", "t_dave"}
    for tenant, sub in truth.items():
        _matches(mirror[tenant], sub)
    assert (mirror["t_alice"].tier, mirror["t_alice"].interval, mirror["t_alice"].quantity) == (
        "pro",
        "year",
        5,
    )
    assert mirror["t_bob"].cancel_at_period_end and mirror["t_carol"].status == "canceled"
    assert mirror["t_dave"].status == "incomplete"  # the failed first payment, as localstripe reports it
    # localstripe never sends customer.subscription.updated: the plan change came in as drift.
    metrics = await (await client.get("/metrics")).text()
    assert 'tiergate_mirror_drift_total{field="tier"}' in metrics

    again = await client.app[RECONCILER].run()
    assert (again.ok, again.repairs) == (True, 0)  # converged


async def _event_ids(api: stripe.StripeClient) -> set[str]:
    listing = await api.v1.events.list_async({"limit": 100})
    return {event.id async for event in listing.auto_paging_iter()}


async def _applied(client: Any, event_ids: set[str]) -> None:
    """Wait until the daemon has recorded each of `event_ids` (localstripe sends them in the background)."""
    mirror = client.app[MIRROR]
    deadline = time.monotonic() + 60  # a loaded runner; it takes well under a second on an idle one
    while not await mirror.transact(lambda txn: all(txn.seen(e) for e in event_ids)):
        if time.monotonic() > deadline:
            tally = client.app[METRICS].webhook_summary()
            raise AssertionError(f"{len(event_ids)} localstripe events not all applied in 60 s: {tally}")
        await asyncio.sleep(0.1)
    assert ("unverified", "rejected") not in client.app[METRICS].webhook_tally


async def test_full_sync_for_the_cli(
    tmp_path: Path, localstripe: str, stripe_api: stripe.StripeClient
) -> None:
    erin = await subscribe(stripe_api, "t_erin", "pro_month", quantity=3, email="Erin@Example.com")
    seen: list[int] = []
    settings = make_settings(tmp_path / "full.db", localstripe)
    summary = await asyncio.to_thread(run_full_sync, settings, progress=seen.append)
    assert (summary.ok, summary.subscriptions, summary.repairs, sum(seen)) == (True, 1, 1, 1)
    assert summary.drift["tier"] == 1
    # The listing's expanded customer gives its email (no webhook reached this mirror).
    assert summary.emails == 1
    with sqlite3.connect(tmp_path / "full.db") as db:
        assert db.execute("SELECT customer_id, email FROM customers").fetchall() == [
            (erin.customer, "Erin@Example.com")
        ]


async def test_stripe_unreachable_is_a_failed_run_not_a_crash(tmp_path: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path / "m.db", "http://127.0.0.1:9")))
    summary = await client.app[RECONCILER].run()
    assert not summary.ok and summary.error is not None and "127.0.0.1:9" in summary.error
    body = await (await client.get("/readyz")).json()
    assert body["ready"] is True and "reconcile" in body["failing"]
