"""Decisions over HTTP from a real replica, the real sample catalog and the real Rego policies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.sidecar.conftest import SAMPLE_FEATURES, SidecarClient


async def check(client: SidecarClient, tenant: str, feature: str, quantity: int = 1) -> dict[str, Any]:
    response = await client.get(
        "/v1/check", params={"tenant": tenant, "feature": feature, "quantity": quantity}
    )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.parametrize(
    ("tenant", "feature", "allow", "reason", "tier"),
    [
        ("pro-active", "sso", True, "ok", "pro"),
        ("pro-active", "audit_log", False, "not_in_plan", "pro"),
        ("ent-active", "audit_log", True, "ok", "enterprise"),
        ("starter-active", "reports", True, "ok", "starter"),
        ("starter-active", "sso", False, "not_in_plan", "starter"),
        ("pro-trialing", "sso", True, "ok", "pro"),
        ("pro-trial-over", "sso", False, "trial_expired", "free"),
        ("pro-trial-over", "dashboards", True, "ok", "free"),
        ("pro-canceling", "sso", True, "ok", "pro"),
        ("pro-grace", "sso", True, "ok", "pro"),
        ("pro-overdue", "sso", False, "payment_overdue", "free"),
        ("pro-overdue", "dashboards", True, "ok", "free"),
        ("pro-unpaid", "sso", False, "subscription_inactive", "free"),
        ("pro-paused", "reports", False, "subscription_inactive", "free"),
        ("pro-incomplete", "sso", False, "subscription_inactive", "free"),
        ("pro-canceled", "sso", False, "not_in_plan", "free"),
        ("pro-expired", "sso", False, "not_in_plan", "free"),
        ("legacy-price", "sso", False, "not_in_plan", "free"),
        ("nobody", "dashboards", True, "ok", "free"),
        ("nobody", "reports", False, "not_in_plan", "free"),
        ("nobody", "teleport", False, "unknown_feature", "free"),
    ],
)
async def test_each_tier_and_status_gets_the_catalogs_answer(
    client: SidecarClient, tenant: str, feature: str, allow: bool, reason: str, tier: str
) -> None:
    decision = await check(client, tenant, feature)
    assert (decision["allow"], decision["reason"], decision["tier"]) == (allow, reason, tier)


async def test_metered_feature_allows_up_to_the_limit(client: SidecarClient) -> None:
    last = await check(client, "pro-active", "api_calls", 1)  # 99,999 used of 100,000
    assert (last["allow"], last["used"], last["limit"], last["remaining"]) == (
        True,
        99_999,
        100_000,
        1,
    )
    over = await check(client, "pro-active", "api_calls", 2)
    assert (over["allow"], over["reason"]) == (False, "limit_exceeded")


async def test_free_tier_usage_is_counted_per_calendar_month(client: SidecarClient) -> None:
    assert (await check(client, "free-heavy", "api_calls"))["reason"] == "limit_exceeded"
    light = await check(client, "free-light", "api_calls", 990)
    assert (light["allow"], light["remaining"]) == (True, 990)


async def test_a_previous_periods_counter_does_not_count(client: SidecarClient) -> None:
    decision = await check(client, "starter-active", "api_calls")
    assert (decision["allow"], decision["used"]) == (True, 0)


async def test_unlimited_feature_has_no_limit(client: SidecarClient) -> None:
    decision = await check(client, "ent-active", "api_calls", 10**6)
    assert (decision["allow"], decision["limit"], decision["remaining"]) == (True, None, None)


async def test_decision_carries_lineage(client: SidecarClient) -> None:
    first = await check(client, "pro-active", "sso")
    second = await check(client, "pro-active", "sso")
    assert first["decision_id"] != second["decision_id"]
    assert first["policy_revision"] and first["policy_revision"] == second["policy_revision"]
    assert first["data_as_of"].endswith("Z")
    assert first["stale"] is False


async def test_trial_decision_is_valid_until_the_trial_ends(client: SidecarClient) -> None:
    from tests.integration.sidecar.conftest import ACCOUNTS

    trial_end = next(a["trial_end"] for a in ACCOUNTS if a["tenant"] == "pro-trialing")
    assert (await check(client, "pro-trialing", "sso"))["valid_until"] == trial_end


async def test_post_check_and_batch(client: SidecarClient) -> None:
    single = await client.post("/v1/check", json={"tenant": "pro-active", "feature": "sso"})
    assert (await single.json())["allow"] is True
    checks = [
        {"tenant": "pro-active", "feature": "sso"},
        {"tenant": "nobody", "feature": "sso"},
        {"tenant": "pro-active", "feature": "api_calls", "quantity": 2},
    ]
    batch = await client.post("/v1/check/batch", json={"checks": checks})
    assert batch.status == 200
    reasons = [d["reason"] for d in (await batch.json())["decisions"]]
    assert reasons == ["ok", "not_in_plan", "limit_exceeded"]


async def test_entitlements_lists_every_feature(client: SidecarClient) -> None:
    response = await client.get("/v1/entitlements/pro-overdue")
    body = await response.json()
    assert body["tier"] == "free"
    assert body["account"]["status"] == "past_due"
    assert body["features"]["sso"]["reason"] == "payment_overdue"
    assert body["features"]["dashboards"]["allow"] is True
    assert sorted(body["features"]) == SAMPLE_FEATURES


async def test_import_while_running_replaces_cached_answers(client: SidecarClient, settings: Any) -> None:
    from tests.integration.sidecar.conftest import PERIOD, write_replica

    assert (await check(client, "newcomer", "sso"))["reason"] == "not_in_plan"  # now cached
    upgraded = [{"tenant": "newcomer", "tier": "enterprise", "status": "active", **PERIOD}]
    write_replica(settings.replica_path, upgraded, [])
    # The sidecar looks for other writers' commits every REFRESH_EVERY_S (50 ms).
    async with asyncio.timeout(5):
        while (decision := await check(client, "newcomer", "sso"))["tier"] != "enterprise":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert decision["allow"] is True


async def test_an_import_seen_first_by_another_endpoint_still_replaces_cached_answers(
    client: SidecarClient, settings: Any
) -> None:
    from tests.integration.sidecar.conftest import PERIOD, write_replica

    assert (await check(client, "latecomer", "sso"))["reason"] == "not_in_plan"  # now cached
    write_replica(
        settings.replica_path, [{"tenant": "latecomer", "tier": "pro", "status": "active", **PERIOD}], []
    )
    assert (await client.get("/v1/status")).status == 200  # reads the replica's new state first
    async with asyncio.timeout(5):
        while (decision := await check(client, "latecomer", "sso"))["tier"] != "pro":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert decision["allow"] is True
