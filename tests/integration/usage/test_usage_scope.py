"""A reserve changes one counter: with a policy that declares `usage_scope := "feature"` (the
shipped one) only the tenant's answers about that feature are dropped, so the feature decision of
an authz route that also records usage stays materialised; a policy that does not declare it may
read any counter, so every answer of the tenant is dropped (and re-decided on its next check)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.usage.conftest import ROOT, SidecarClient, SidecarFactory, used
from tiergate.sidecar.state import DECISIONS


async def reserve_one(sidecar: SidecarClient, tenant: str) -> None:
    body = {"tenant": tenant, "feature": "api_calls", "reserve": True}
    response = await sidecar.post("/v1/check", json=body)
    assert response.status == 200 and (await response.json())["reservation"]["reserved"] is True


async def authz(sidecar: SidecarClient, tenant: str) -> int:
    headers = {"X-Original-URI": "/api/v1/reports/r1", "X-Original-Method": "POST", "X-Tenant-Id": tenant}
    return (await sidecar.get("/v1/authz", headers=headers)).status


async def test_a_reserve_keeps_the_answers_of_other_features(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    cache = sidecar.app[DECISIONS].cache
    assert (await sidecar.get("/v1/check?tenant=t_sc&feature=dashboards")).status == 200
    assert cache.holds("t_sc", "dashboards", 1)
    await reserve_one(sidecar, "t_sc")
    assert cache.holds("t_sc", "dashboards", 1)  # the policy reads only api_calls for api_calls
    assert await used(sidecar, "t_sc") == 1  # ... and the reserved feature's answer is not stale
    await reserve_one(sidecar, "t_sc")
    assert await used(sidecar, "t_sc") == 2


async def test_an_authz_route_with_usage_keeps_its_feature_decision(make_sidecar: SidecarFactory) -> None:
    """POST /api/v1/reports/** checks `reports` and records `api_calls` (plans.yaml's routes)."""
    sidecar = await make_sidecar(None)
    decisions = sidecar.app[DECISIONS]
    assert await authz(sidecar, "t_az") == 403  # free tier: no reports; nothing recorded
    assert decisions.cache.holds("t_az", "reports", 1)
    await reserve_one(sidecar, "t_az")
    assert decisions.cache.holds("t_az", "reports", 1)
    misses = decisions.counts.misses
    assert await authz(sidecar, "t_az") == 403
    assert decisions.counts.misses == misses  # the feature decision came from memory


async def test_a_policy_without_the_declaration_drops_every_answer(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    policies = tmp_path / "custom-policies"
    shutil.copytree(ROOT / "policies", policies)
    rego = policies / "entitlements.rego"
    text = rego.read_text(encoding="utf-8")
    assert 'usage_scope := "feature"' in text
    rego.write_text(text.replace('usage_scope := "feature"', ""), encoding="utf-8")
    sidecar = await make_sidecar(None, policies=policies)
    cache = sidecar.app[DECISIONS].cache
    assert (await sidecar.get("/v1/check?tenant=t_sc&feature=dashboards")).status == 200
    await reserve_one(sidecar, "t_sc")
    assert not cache.holds("t_sc", "dashboards", 1)  # it might read api_calls: decided again
    assert await used(sidecar, "t_sc") == 1
