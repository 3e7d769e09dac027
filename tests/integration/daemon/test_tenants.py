"""GET /v1/tenants/{tenant} and GET /v1/tenants?q= on both mirror backends, fed by signed webhooks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from tests.integration.daemon.conftest import Daemon
from tests.stripe_payloads import invoice_event, subscription_event
from tiergate.periods import rfc3339
from tiergate.sync_daemon.mirror.store import Retention

API_TOKEN = "api-token-for-tenant-lookups-0123456789"
CONSOLE_TOKEN = "console-token-read-only-0123456789abcd"
TOKENS = {"api_token": SecretStr(API_TOKEN), "console_token": SecretStr(CONSOLE_TOKEN)}
API = {"Authorization": f"Bearer {API_TOKEN}"}
CONSOLE = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
CREATED = "customer.subscription.created"
UPDATE = "customer.subscription.updated.upgrade"
pytestmark = pytest.mark.parametrize("daemon", [TOKENS], indirect=True)


def _current(**fields: Any) -> dict[str, Any]:
    """Subscription fields for a period around now (the fixtures' periods are long past)."""
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(days=3), now + timedelta(days=27)
    return {
        "current_period_start": int(start.timestamp()),
        "current_period_end": int(end.timestamp()),
        **fields,
    }


async def _get(daemon: Daemon, path: str, headers: dict[str, str] = API) -> tuple[int, dict[str, Any]]:
    response = await daemon.client.get(path, headers=headers)
    return response.status, await response.json()


async def _subscribe(daemon: Daemon, tenant: str = "t_alice", **fields: Any) -> dict[str, Any]:
    event = subscription_event(
        CREATED, event_id=f"evt_created_{tenant}", tenant=tenant, quantity=3, **_current(**fields)
    )
    status, body = await daemon.post(event)
    assert (status, body["outcome"]) == (200, "applied"), body
    return event


async def test_lookup_shows_the_account_what_a_sidecar_answers_and_the_event_behind_it(
    daemon: Daemon,
) -> None:
    event = await _subscribe(daemon)
    status, body = await _get(daemon, "/v1/tenants/t_alice")
    assert status == 200, body
    assert body["known"] is True and body["tier"] == "pro" and body["paid_tier"] == "pro"
    account = body["account"]
    assert (account["status"], account["seats"], account["interval"]) == ("active", 3, "month")
    assert account["stripe_customer_id"] == "cus_fixtureAlice01"
    sso = body["entitlements"]["features"]["sso"]
    assert (sso["allow"], sso["reason"], sso["source"], sso["paid_tier"]) == (True, "ok", "plan", "pro")
    assert body["entitlements"]["policy_revision"]
    [version] = body["versions"]
    assert (version["cause"], version["event_id"], version["event_type"]) == (
        "stripe_event",
        event["id"],
        CREATED,
    )
    assert version["account"]["tier"] == "pro" and version["version"] == 1
    assert [e["event_id"] for e in body["stripe_events"]] == [event["id"]]


async def test_a_denial_names_the_paid_tier_and_the_events_that_caused_it(daemon: Daemon) -> None:
    created = await _subscribe(daemon)
    failed = invoice_event("invoice.payment_failed")
    failed["created"] = int((datetime.now(UTC) - timedelta(days=40)).timestamp())
    assert (await daemon.post(failed))[0] == 200
    overdue = subscription_event(
        UPDATE, event_id="evt_overdue", created=failed["created"] + 1, **_current(status="past_due")
    )
    assert (await daemon.post(overdue))[1]["outcome"] == "applied"
    _, body = await _get(daemon, "/v1/tenants/t_alice")
    assert body["account"]["status"] == "past_due" and body["account"]["past_due_since"]
    sso = body["entitlements"]["features"]["sso"]
    # Past the tier's grace: the free tier applies, and the answer says which tier is paid for.
    assert (sso["allow"], sso["reason"], sso["tier"], sso["paid_tier"]) == (
        False,
        "payment_overdue",
        "free",
        "pro",
    )
    assert body["tier"] == "free" and body["paid_tier"] == "pro"
    assert [(v["version"], v["event_id"]) for v in body["versions"]] == [
        (3, "evt_overdue"),
        (2, failed["id"]),
        (1, created["id"]),
    ]
    assert body["stripe_events"][1]["event_type"] == "invoice.payment_failed"


async def test_an_override_shows_as_the_source_with_its_audit(daemon: Daemon) -> None:
    await _subscribe(daemon)
    put = await daemon.client.put(
        "/v1/tenants/t_alice/overrides/api_calls",
        json={"value": {"limit": 5_000_000}, "reason": "big migration", "actor": "ana"},
        headers=API,
    )
    assert put.status == 200, await put.text()
    _, body = await _get(daemon, "/v1/tenants/t_alice", CONSOLE)
    calls = body["entitlements"]["features"]["api_calls"]
    assert (calls["source"], calls["limit"]) == ("override", 5_000_000)
    assert [(o["feature"], o["actor"]) for o in body["overrides"]] == [("api_calls", "ana")]
    assert body["override_audit"][0]["reason"] == "big migration"


async def test_a_tenant_without_an_account_is_on_the_default_tier(daemon: Daemon) -> None:
    status, body = await _get(daemon, "/v1/tenants/t_nobody")
    assert status == 200
    assert (body["known"], body["account"], body["paid_tier"], body["tier"]) == (False, None, None, "free")
    assert body["entitlements"]["features"]["sso"]["reason"] == "not_in_plan"


async def test_search_by_tenant_customer_and_subscription(daemon: Daemon) -> None:
    await _subscribe(daemon, "t_alice")
    await _subscribe(daemon, "t_alfred", id="sub_other", customer="cus_other")
    for query, expected in (
        ("t_al", ["t_alfred", "t_alice"]),
        ("T_ALI", ["t_alice"]),
        ("cus_fixtureAlice01", ["t_alice"]),
        ("sub_oth", ["t_alfred"]),
        ("nothing", []),
        ("t_%", []),  # LIKE's wildcards are taken literally
    ):
        status, body = await _get(daemon, f"/v1/tenants?q={query}")
        assert status == 200, body
        assert [t["tenant"] for t in body["tenants"]] == expected, query


@pytest.mark.parametrize(
    ("query", "field"),
    [("", "q"), ("q=", "q"), ("q=" + "x" * 201, "q"), ("q=t&limit=0", "limit"), ("q=t&limit=x", "limit")],
)
async def test_bad_search_is_a_400_naming_the_field(daemon: Daemon, query: str, field: str) -> None:
    status, body = await _get(daemon, f"/v1/tenants?{query}")
    assert (status, body["error"]["field"]) == (400, field)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token-wrong"}])
async def test_lookups_need_a_token(daemon: Daemon, headers: dict[str, str]) -> None:
    for path in ("/v1/tenants/t_alice", "/v1/tenants?q=t"):
        status, body = await _get(daemon, path, headers)
        assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_account_versions_keep_the_newest_per_tenant_past_retention(daemon: Daemon) -> None:
    await _subscribe(daemon)
    await daemon.post(subscription_event(UPDATE, lookup_key="enterprise_month", **_current()))
    old = rfc3339(datetime.now(UTC) - timedelta(days=400))
    await daemon.mirror.transact(lambda txn: txn.sql.execute("UPDATE account_versions SET at = ?", [old]))
    keep = timedelta(days=30)
    deleted = await daemon.mirror.prune(Retention(keep, keep, keep, account_versions=keep))
    assert deleted["account_versions"] == 1
    _, body = await _get(daemon, "/v1/tenants/t_alice")
    assert [v["version"] for v in body["versions"]] == [2]
