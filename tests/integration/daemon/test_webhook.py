"""POST /webhooks/stripe with signed fixture payloads against the daemon's real handler."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration.daemon.conftest import Daemon
from tests.stripe_payloads import invoice_event, load_event, recorded, sign, subscription_event
from tiergate.sync_daemon.mirror.store import MirrorAccount, MirrorTxn
from tiergate.sync_daemon.stripe_sync import apply

CREATED = "customer.subscription.created"
UPDATED = "customer.subscription.updated.upgrade"
T0 = 1_767_225_601


async def _nothing_stored(daemon: Daemon) -> None:
    assert await daemon.mirror.accounts() == []
    assert daemon.mirror.seq == 0
    assert not await daemon.mirror.transact(lambda txn: txn.seen("evt_fixture_sub_created"))


async def test_valid_event_is_committed_before_2xx(daemon: Daemon) -> None:
    status, body = await daemon.post(subscription_event(CREATED, quantity=3))
    assert (status, body["outcome"]) == (200, "applied")
    account = await daemon.account("t_alice")
    assert account is not None
    assert (account.tier, account.interval, account.status, account.quantity) == ("pro", "month", "active", 3)
    assert account.stripe_customer_id == "cus_fixtureAlice01" and account.stripe_updated == T0
    assert daemon.mirror.seq == 1


@pytest.mark.parametrize("case", ["tampered", "stale", "missing", "wrong_secret", "not_json", "not_an_event"])
async def test_rejections_are_400_and_store_nothing(daemon: Daemon, case: str) -> None:
    raw = json.dumps(subscription_event(CREATED))
    headers = {"Content-Type": "application/json", "Stripe-Signature": sign(raw)}
    if case == "tampered":
        raw = raw.replace('"quantity": 1', '"quantity": 99')
    elif case == "stale":
        headers["Stripe-Signature"] = sign(raw, timestamp=int(time.time()) - 600)
    elif case == "missing":
        del headers["Stripe-Signature"]
    elif case == "wrong_secret":
        headers["Stripe-Signature"] = sign(raw, secret="whsec_someone_else")
    elif case == "not_json":
        raw = "this is not json"
        headers["Stripe-Signature"] = sign(raw)
    elif case == "not_an_event":
        raw = json.dumps({"hello": "world"})
        headers["Stripe-Signature"] = sign(raw)
    response = await daemon.client.post("/webhooks/stripe", data=raw, headers=headers)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "webhook_rejected"
    assert error["field"] == ("body" if case.startswith("not_") else "Stripe-Signature")
    assert "whsec" not in error["message"] and "v1=" not in error["message"]
    await _nothing_stored(daemon)


async def test_duplicate_event_id_changes_nothing(daemon: Daemon) -> None:
    event = subscription_event(CREATED)
    assert (await daemon.post(event))[1]["outcome"] == "applied"
    # The same id again, even with a different body: Stripe's retry of a delivery we already hold.
    replay = subscription_event(CREATED, quantity=42)
    status, body = await daemon.post(replay)
    assert (status, body["outcome"]) == (200, "duplicate")
    account = await daemon.account("t_alice")
    assert account is not None and account.quantity == 1 and daemon.mirror.seq == 1


async def test_updated_before_created_converges(daemon: Daemon) -> None:
    upgrade = subscription_event(UPDATED, lookup_key="enterprise_month", quantity=5)
    assert (await daemon.post(upgrade))[1]["outcome"] == "applied"
    assert (await daemon.post(subscription_event(CREATED)))[1]["outcome"] == "stale"
    account = await daemon.account("t_alice")
    assert account is not None and (account.tier, account.quantity) == ("enterprise", 5)


async def test_older_event_after_newer_is_ignored(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    cancel = subscription_event("customer.subscription.updated.cancel_at_period_end")
    resumed = subscription_event("customer.subscription.updated.resumed")
    assert (await daemon.post(resumed))[1]["outcome"] == "applied"
    assert (await daemon.post(cancel))[1]["outcome"] == "stale"  # created earlier than `resumed`
    account = await daemon.account("t_alice")
    assert account is not None and account.cancel_at_period_end is False


async def test_same_second_tie_refetches_from_stripe(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    truth = subscription_event(CREATED, quantity=7)["data"]["object"]
    daemon.stripe.subscriptions["sub_fixtureAlice01"] = truth
    tie = subscription_event(UPDATED, event_id="evt_tie", created=T0, quantity=5)
    status, body = await daemon.post(tie)
    assert (status, body["outcome"]) == (200, "refetched")
    assert daemon.stripe.requests == ["/v1/subscriptions/sub_fixtureAlice01"]
    account = await daemon.account("t_alice")
    assert account is not None and (account.quantity, account.needs_reconcile) == (7, False)


async def test_a_tie_that_appears_after_the_lookup_is_refetched_too(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Race: a reconcile commits the same second's state between the event's lookup and its write.

    Only an event that must ask Stripe first has a lookup apart from its write (here: its customer
    is not linked yet and it names no tenant); the others read and write in one transaction."""
    truth = subscription_event(CREATED, quantity=7)["data"]["object"]
    daemon.stripe.subscriptions["sub_fixtureAlice01"] = truth
    daemon.stripe.customers["cus_fixtureAlice01"] = {
        "id": "cus_fixtureAlice01",
        "metadata": {"tenant_id": "t_alice"},
    }
    reconciled = MirrorAccount("t_alice", "pro", "active", subscription_id="sub_fixtureAlice01", quantity=7)

    def lookup_then_reconcile(txn: MirrorTxn, *args: Any) -> Any:
        found = real_lookup(txn, *args)  # no account yet: nothing to refetch for
        txn.put_account(reconciled.replace(stripe_updated=T0))  # what the reconcile commits just after
        return found

    real_lookup = apply._lookup
    monkeypatch.setattr(apply, "_lookup", lookup_then_reconcile)
    status, body = await daemon.post(subscription_event(CREATED, quantity=5, tenant=None))  # at T0: a tie
    assert (status, body["outcome"]) == (200, "refetched")
    assert daemon.stripe.requests == [
        "/v1/customers/cus_fixtureAlice01",
        "/v1/subscriptions/sub_fixtureAlice01",
    ]
    account = await daemon.account("t_alice")
    assert account is not None and (account.quantity, account.needs_reconcile) == (7, False)


@pytest.mark.parametrize("daemon", [{"stripe_refetch": False}], indirect=True)
async def test_tie_without_refetch_applies_and_marks_for_reconcile(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    await daemon.post(subscription_event(UPDATED, event_id="evt_tie", created=T0, quantity=5))
    account = await daemon.account("t_alice")
    assert account is not None and (account.quantity, account.needs_reconcile) == (5, True)
    assert daemon.stripe.requests == []


async def test_tie_with_stripe_down_applies_and_marks_for_reconcile(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    daemon.stripe.fail = True
    status, body = await daemon.post(subscription_event(UPDATED, event_id="evt_tie", created=T0, quantity=5))
    assert (status, body["outcome"]) == (200, "tie_unresolved")
    account = await daemon.account("t_alice")
    assert account is not None and (account.quantity, account.needs_reconcile) == (5, True)
    # A later, strictly newer state is trusted again.
    await daemon.post(subscription_event(UPDATED, event_id="evt_next", created=T0 + 1, quantity=6))
    account = await daemon.account("t_alice")
    assert account is not None and (account.quantity, account.needs_reconcile) == (6, False)


async def test_unknown_types_are_acknowledged_and_counted(daemon: Daemon) -> None:
    event = load_event(CREATED) | {"type": "charge.refunded", "id": "evt_other"}
    assert await daemon.post(event) == (200, {"received": True, "id": "evt_other", "outcome": "ignored"})
    assert await daemon.mirror.accounts() == []
    metrics = await (await daemon.client.get("/metrics")).text()
    assert 'tiergate_webhooks_total{outcome="ignored",type="other"} 1.0' in metrics


async def test_unmapped_price_is_kept_flagged_logged_and_counted(daemon: Daemon) -> None:
    with capture_logs() as logs:
        await daemon.post(subscription_event(CREATED, lookup_key="team_monthly", price_id="price_team"))
    account = await daemon.account("t_alice")
    assert account is not None and (account.tier, account.unmapped_price) == ("price_team", True)
    assert {"event": "unmapped_price", "price": "price_team"}.items() <= next(
        e for e in logs if e["event"] == "unmapped_price"
    ).items()
    assert "tiergate_unmapped_prices_total 1.0" in await (await daemon.client.get("/metrics")).text()


async def test_localstripe_shape_maps_through_the_customer_link(daemon: Daemon) -> None:
    customer = {"id": "evt_cus", "type": "customer.created", "created": 1795514990, "object": "event"}
    customer["data"] = {
        "object": {"id": "cus_HIu2XOGkrKtkw4", "object": "customer", "metadata": {"tenant_id": "t_ls"}}
    }
    assert (await daemon.post(customer))[1]["outcome"] == "applied"
    delivery = recorded("customer.subscription.created")
    # The recorded signature is from the past: sign the same bytes now, with the same secret.
    status, body = await daemon.post(delivery["raw_body"])
    assert (status, body["outcome"]) == (200, "applied")
    account = await daemon.account("t_ls")
    assert account is not None
    assert (account.tier, account.status, account.unmapped_price) == ("m", "incomplete", True)
    assert account.current_period_end == datetime.fromtimestamp(1798106992, UTC)


async def test_unlinked_customer_is_looked_up_in_stripe(daemon: Daemon) -> None:
    daemon.stripe.customers["cus_fixtureAlice01"] = {
        "id": "cus_fixtureAlice01",
        "object": "customer",
        "metadata": {"tenant_id": "t_lookup"},
    }
    assert (await daemon.post(subscription_event(CREATED, tenant=None)))[1]["outcome"] == "applied"
    assert await daemon.account("t_lookup") is not None


async def test_checkout_links_then_invoices_map_by_customer(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED, tenant="user_42"))
    assert (await daemon.post(load_event("checkout.session.completed")))[1]["outcome"] == "linked"
    assert (await daemon.post(invoice_event("invoice.payment_failed", tenant=None)))[1][
        "outcome"
    ] == "applied"
    account = await daemon.account("user_42")
    assert account is not None and account.payment_attempts == 1
    assert account.past_due_since == datetime.fromtimestamp(1769904050, UTC)
    paid = invoice_event("invoice.paid", tenant=None) | {"created": 1769904100}
    assert (await daemon.post(paid))[1]["outcome"] == "applied"
    account = await daemon.account("user_42")
    assert account is not None and (account.past_due_since, account.payment_attempts) == (None, 0)


async def test_subscription_deleted_is_canceled_and_customer_deleted_is_a_delete(daemon: Daemon) -> None:
    await daemon.post(subscription_event(CREATED))
    await daemon.post(subscription_event("customer.subscription.deleted"))
    account = await daemon.account("t_alice")
    assert account is not None and account.status == "canceled"
    gone: dict[str, Any] = {
        "id": "evt_cus_del",
        "object": "event",
        "type": "customer.deleted",
        "created": 1769904100,
    }
    gone["data"] = {"object": {"id": "cus_fixtureAlice01", "object": "customer", "metadata": {}}}
    assert (await daemon.post(gone))[1]["outcome"] == "deleted"
    assert await daemon.account("t_alice") is None
    late = subscription_event(UPDATED, event_id="evt_late")  # older than the deletion
    assert (await daemon.post(late))[1]["outcome"] == "customer_deleted"
    changes = (await daemon.mirror.changes_since(0, 10)).changes
    assert [(c["op"], c.get("account", {}).get("status")) for c in changes] == [
        ("upsert", "active"),
        ("upsert", "canceled"),
        ("delete", None),
    ]
