"""The Stripe customer's email: kept from webhooks and reconciliation, searched by support, on both
mirror backends; an older event never overwrites a newer address, a deleted customer's is dropped."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import SecretStr

from tests.integration.daemon.conftest import Daemon
from tests.stripe_payloads import customer_event, subscription_event
from tiergate.sync_daemon.state import RECONCILER

API_TOKEN = "api-token-for-email-searches-0123456789"
API = {"Authorization": f"Bearer {API_TOKEN}"}
pytestmark = pytest.mark.parametrize("daemon", [{"api_token": SecretStr(API_TOKEN)}], indirect=True)
ALICE = "cus_fixtureAlice01"


async def _search(daemon: Daemon, query: str) -> list[dict[str, Any]]:
    response = await daemon.client.get("/v1/tenants", params={"q": query}, headers=API)
    assert response.status == 200, await response.text()
    found: list[dict[str, Any]] = (await response.json())["tenants"]
    return found


async def _tenant(daemon: Daemon, tenant: str) -> dict[str, Any]:
    response = await daemon.client.get(f"/v1/tenants/{tenant}", headers=API)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def _applied(daemon: Daemon, event: dict[str, Any], outcome: str = "applied") -> None:
    status, body = await daemon.post(event)
    assert (status, body.get("outcome")) == (200, outcome), body


async def _emails(daemon: Daemon) -> dict[str, tuple[Any, Any]]:
    rows = await daemon.mirror.read(
        lambda sql: sql.execute("SELECT customer_id, email, email_at FROM customers").fetchall()
    )
    return {str(customer): (email, email_at) for customer, email, email_at in rows}


async def test_search_by_email_any_case_exact_or_prefix_wildcards_literal(daemon: Daemon) -> None:
    await _applied(daemon, subscription_event("customer.subscription.created", event_id="evt_sub_alice"))
    await _applied(
        daemon, customer_event("customer.updated", event_id="evt_a", email="Alice_Ops@Example.COM")
    )
    # A customer with no subscription yet (default tier) is found by its email too.
    bob = customer_event(event_id="evt_b", customer_id="cus_bob", tenant="t_bob", email="bob@example.org")
    await _applied(daemon, bob)
    for query, expected in (
        ("alice_ops@example.com", ["t_alice"]),  # exact, another case
        ("ALICE_OPS@", ["t_alice"]),
        ("alice%", []),  # LIKE's wildcards are taken literally
        ("alice_", ["t_alice"]),  # `_` matches only itself
        ("aliceXops", []),
        ("bob@", ["t_bob"]),
        ("example", []),  # a prefix, not a substring
    ):
        assert [t["tenant"] for t in await _search(daemon, query)] == expected, query
    [alice] = await _search(daemon, "alice_ops")
    assert (alice["tier"], alice["emails"]) == ("pro", ["Alice_Ops@Example.COM"])
    [bob_found] = await _search(daemon, "BOB@EXAMPLE.ORG")
    assert (bob_found["tier"], bob_found["emails"]) == (None, ["bob@example.org"])
    view = await _tenant(daemon, "t_alice")
    assert view["customer_emails"] == {ALICE: "Alice_Ops@Example.COM"}


async def test_an_older_event_never_overwrites_a_newer_email_and_a_replay_changes_nothing(
    daemon: Daemon,
) -> None:
    now = int(time.time())
    await _applied(daemon, customer_event(event_id="evt_new", created=now, email="new@example.com"))
    late = customer_event("customer.updated", event_id="evt_old", created=now - 60, email="old@example.com")
    await _applied(daemon, late)  # the link is kept; the older address is not
    assert (await _emails(daemon))[ALICE] == ("new@example.com", now)
    await _applied(
        daemon, customer_event(event_id="evt_new", created=now, email="x@example.com"), "duplicate"
    )
    assert (await _emails(daemon))[ALICE] == ("new@example.com", now)
    assert await _search(daemon, "old@") == []
    # A same-second update from Stripe wins (the newest delivery of that second is the latest state).
    await _applied(daemon, customer_event("customer.updated", event_id="evt_same", created=now, email=None))
    assert (await _emails(daemon))[ALICE] == (None, now)


async def test_a_deleted_customer_email_is_dropped(daemon: Daemon) -> None:
    now = int(time.time())
    await _applied(daemon, subscription_event("customer.subscription.created", event_id="evt_sub"))
    await _applied(daemon, customer_event(event_id="evt_c", created=now - 5, email="gone@example.com"))
    assert [t["tenant"] for t in await _search(daemon, "gone@")] == ["t_alice"]
    await _applied(daemon, customer_event("customer.deleted", event_id="evt_d", created=now), "deleted")
    assert await _search(daemon, "gone@") == []
    assert (await _emails(daemon))[ALICE] == (None, now)
    # An update sent before the deletion but delivered after it brings nothing back.
    late = customer_event("customer.updated", event_id="evt_late", created=now - 1, email="gone@example.com")
    await _applied(daemon, late, "customer_deleted")
    assert (await _emails(daemon))[ALICE] == (None, now)
    assert (await _tenant(daemon, "t_alice"))["customer_emails"] == {}


async def test_an_expanded_customer_in_a_subscription_carries_its_email(daemon: Daemon) -> None:
    customer = {"id": "cus_exp", "object": "customer", "email": "Ops@Carol.io", "metadata": {}}
    event = subscription_event(
        "customer.subscription.created", event_id="evt_exp", tenant="t_carol", customer=customer
    )
    await _applied(daemon, event)
    [found] = await _search(daemon, "ops@carol.io")
    assert (found["tenant"], found["stripe_customer_id"], found["emails"]) == (
        "t_carol",
        "cus_exp",
        ["Ops@Carol.io"],
    )


@pytest.mark.parametrize("email", [42, "x" * 513, "tab\there@example.com"])
async def test_a_malformed_email_is_a_400_naming_the_field_and_changes_nothing(
    daemon: Daemon, email: object
) -> None:
    status, body = await daemon.post(customer_event(event_id="evt_bad", email=email))
    assert (status, body["error"]["field"]) == (400, "data.object.email")
    assert str(email) not in str(body)  # personal data is not echoed
    assert await _emails(daemon) == {}


async def test_reconciliation_keeps_the_listed_customers_emails(daemon: Daemon) -> None:
    await _applied(daemon, subscription_event("customer.subscription.created", event_id="evt_sub"))
    listed = subscription_event("customer.subscription.created")["data"]["object"]
    listed["customer"] = {"id": ALICE, "object": "customer", "email": "Listed@Example.com", "metadata": {}}
    daemon.stripe.subscriptions = {listed["id"]: listed}
    reconciler = daemon.client.app[RECONCILER]
    summary = await reconciler.run()
    assert summary.ok and summary.emails == 1, summary
    assert [t["tenant"] for t in await _search(daemon, "listed@example.com")] == ["t_alice"]
    again = await reconciler.run()
    assert (again.ok, again.emails) == (True, 0)  # nothing to write once the mirror agrees

    # A webhook newer than the listing wins over what the next run lists.
    newer = customer_event(
        "customer.updated", event_id="evt_newer", created=int(time.time()) + 30, email="w@x.io"
    )
    await _applied(daemon, newer)
    third = await reconciler.run()
    assert third.emails == 0
    assert (await _emails(daemon))[ALICE][0] == "w@x.io"
