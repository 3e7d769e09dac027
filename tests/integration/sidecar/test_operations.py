"""Health, readiness, metrics, status, hot reload and policy failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.integration.sidecar.conftest import SidecarClient

RELOAD_TIMEOUT_S = 10.0


async def decision(client: SidecarClient, tenant: str, feature: str) -> dict[str, Any]:
    response = await client.get("/v1/check", params={"tenant": tenant, "feature": feature})
    body: dict[str, Any] = await response.json()
    return body


async def eventually(predicate: Any) -> None:
    """Poll until predicate() is true; the deadline is generous, we never assert durations."""
    async with asyncio.timeout(RELOAD_TIMEOUT_S):
        while not await predicate():  # noqa: ASYNC110 - polling an HTTP answer, no event to wait on
            await asyncio.sleep(0.05)


async def test_health_and_readiness(client: SidecarClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200
    assert body["ready"] is True
    assert {"policy", "replica", "engine"} <= set(body["ok"])


async def test_metrics_count_decisions_by_reason(client: SidecarClient) -> None:
    await decision(client, "nobody", "reports")
    text = await (await client.get("/metrics")).text()
    assert 'tiergate_decisions_total{allow="false",reason="not_in_plan"} 1.0' in text
    assert "tiergate_decision_seconds_bucket" in text
    assert "tiergate_replica_age_seconds" in text


async def test_status_reports_replica_and_policy(client: SidecarClient) -> None:
    body = await (await client.get("/v1/status")).json()
    assert body["replica"]["accounts"] == 14
    assert body["policy"]["revision"]
    assert body["engine"] == "embedded"


async def test_policy_edit_changes_answers_without_restart(client: SidecarClient, policy_dir: Path) -> None:
    assert (await decision(client, "nobody", "reports"))["allow"] is False
    plans = policy_dir.parent / "plans.yaml"
    plans.write_text(plans.read_text().replace("      reports: false", "      reports: true", 1))

    async def allowed() -> bool:
        return bool((await decision(client, "nobody", "reports"))["allow"])

    await eventually(allowed)


async def test_broken_policy_keeps_the_last_good_one_and_stays_ready(
    client: SidecarClient, policy_dir: Path
) -> None:
    before = await decision(client, "pro-active", "sso")
    entitlements = policy_dir / "entitlements.rego"
    entitlements.write_text(entitlements.read_text() + "\nthis is not rego {\n")

    async def reported() -> bool:
        body = await (await client.get("/readyz")).json()
        return bool(body["warnings"].get("policy_reload"))

    await eventually(reported)
    ready = await client.get("/readyz")
    assert ready.status == 200  # a bad push must not take every pod out of service
    assert "entitlements.rego" in (await ready.json())["warnings"]["policy_reload"]
    after = await decision(client, "pro-active", "sso")
    assert (after["allow"], after["policy_revision"]) == (True, before["policy_revision"])


async def test_policy_that_returns_garbage_is_a_policy_error_deny(
    client: SidecarClient, policy_dir: Path
) -> None:
    entitlements = policy_dir / "entitlements.rego"
    entitlements.write_text('package tiergate.entitlements\n\ndecision := {"allow": "yes"}\n')

    async def policy_error() -> bool:
        return bool((await decision(client, "pro-active", "sso"))["reason"] == "policy_error")

    await eventually(policy_error)
    body = await decision(client, "pro-active", "sso")
    assert body["allow"] is False
    text = await (await client.get("/metrics")).text()
    assert "tiergate_engine_errors_total" in text
