"""The real policies against the real plans/plans.yaml: one row per tier, status and feature."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import regorus

from tiergate.catalog import load_catalog
from tiergate.policy.bundle import load_bundle
from tiergate.policy.embedded import EmbeddedEngine

ROOT = Path(__file__).resolve().parents[3]
NOW = "2026-11-24T10:00:00Z"
PERIOD = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
LATER = "2026-11-28T00:00:00Z"  # in the future of NOW, before the period ends


def days_ago(days: int) -> str:
    return f"2026-11-{24 - days:02d}T10:00:00Z"


class VmEvaluator:
    """The sidecar's adapter on regorus's compiled VM, behind the same two calls as regorus.Engine."""

    def __init__(self) -> None:
        self.engine = EmbeddedEngine(compiled=True)
        asyncio.run(self.engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml")))
        self.input: Any = None

    def set_input(self, document: Any) -> None:
        self.input = document

    def eval_rule(self, path: str) -> Any:
        return asyncio.run(self.engine.evaluate(path, self.input))


@pytest.fixture(scope="module", params=["interpreter", "vm"])
def engine(request: pytest.FixtureRequest) -> Any:
    """Every row runs on the interpreter and on the compiled VM the sidecar uses by default."""
    if request.param == "vm":
        return VmEvaluator()
    engine = regorus.Engine()
    for name in ("entitlements.rego", "ingress.rego"):
        path = ROOT / "policies" / name
        engine.add_policy(str(path), path.read_text(encoding="utf-8"))
    engine.add_data({"plans": load_catalog(ROOT / "plans" / "plans.yaml").policy_data()})
    return engine


def account(tier: str, status: str, **fields: object) -> dict[str, Any]:
    return {
        "tier": tier,
        "status": status,
        "quantity": 1,
        "current_period_start": PERIOD["start"],
        "current_period_end": PERIOD["end"],
        "trial_end": None,
        "cancel_at_period_end": False,
        "past_due_since": None,
        **fields,
    }


def document(acct: dict[str, Any] | None, feature: str, used: int = 0) -> dict[str, Any]:
    """The input of one row: `feature` asked once at NOW, `used` of it so far."""
    return {
        "tenant": "t_1",
        "feature": feature,
        "quantity": 1,
        "now": NOW,
        "account": acct,
        "usage": {feature: used} if used else {},
        "period": PERIOD,
        "replica": {"age_seconds": 0.5},
    }


def decide(engine: Any, acct: dict[str, Any] | None, feature: str, used: int = 0) -> dict[str, Any]:
    engine.set_input(document(acct, feature, used))
    decision: dict[str, Any] = engine.eval_rule("data.tiergate.entitlements.decision")
    return decision


# (case, account, feature, used) -> (allow, reason, effective tier)
DECISIONS: list[tuple[str, dict[str, Any] | None, str, int, bool, str, str]] = [
    ("no account, free feature", None, "dashboards", 0, True, "ok", "free"),
    ("no account, paid feature", None, "reports", 0, False, "not_in_plan", "free"),
    ("no account, under the free quota", None, "api_calls", 999, True, "ok", "free"),
    ("no account, free quota used up", None, "api_calls", 1000, False, "limit_exceeded", "free"),
    ("unknown feature", None, "teleport", 0, False, "unknown_feature", "free"),
    ("starter active", account("starter", "active"), "reports", 0, True, "ok", "starter"),
    ("starter has no sso", account("starter", "active"), "sso", 0, False, "not_in_plan", "starter"),
    ("starter quota", account("starter", "active"), "exports", 200, False, "limit_exceeded", "starter"),
    ("pro active", account("pro", "active"), "sso", 0, True, "ok", "pro"),
    ("pro unlimited exports", account("pro", "active"), "exports", 10**6, True, "ok", "pro"),
    ("pro has no audit log", account("pro", "active"), "audit_log", 0, False, "not_in_plan", "pro"),
    ("enterprise active", account("enterprise", "active"), "audit_log", 0, True, "ok", "enterprise"),
    ("enterprise unlimited", account("enterprise", "active"), "api_calls", 10**9, True, "ok", "enterprise"),
    ("trialing", account("pro", "trialing", trial_end=LATER), "sso", 0, True, "ok", "pro"),
    (
        "trial expired",
        account("pro", "trialing", trial_end=days_ago(1)),
        "sso",
        0,
        False,
        "trial_expired",
        "free",
    ),
    (
        "trial expired, free feature",
        account("pro", "trialing", trial_end=days_ago(1)),
        "dashboards",
        0,
        True,
        "ok",
        "free",
    ),
    (
        "pro past_due in grace",
        account("pro", "past_due", past_due_since=days_ago(5)),
        "sso",
        0,
        True,
        "ok",
        "pro",
    ),
    (
        "starter past_due after grace",
        account("starter", "past_due", past_due_since=days_ago(5)),
        "reports",
        0,
        False,
        "payment_overdue",
        "free",
    ),
    (
        "starter overdue over free quota",
        account("starter", "past_due", past_due_since=days_ago(5)),
        "exports",
        50,
        False,
        "payment_overdue",
        "free",
    ),
    (
        "enterprise past_due in grace",
        account("enterprise", "past_due", past_due_since=days_ago(10)),
        "audit_log",
        0,
        True,
        "ok",
        "enterprise",
    ),
    (
        "pro past_due after grace",
        account("pro", "past_due", past_due_since=days_ago(8)),
        "sso",
        0,
        False,
        "payment_overdue",
        "free",
    ),
    ("unpaid", account("pro", "unpaid"), "sso", 0, False, "subscription_inactive", "free"),
    ("paused", account("pro", "paused"), "reports", 0, False, "subscription_inactive", "free"),
    ("incomplete", account("starter", "incomplete"), "reports", 0, False, "subscription_inactive", "free"),
    ("inactive, free feature", account("pro", "unpaid"), "dashboards", 0, True, "ok", "free"),
    ("canceled", account("pro", "canceled"), "sso", 0, False, "not_in_plan", "free"),
    ("incomplete_expired", account("pro", "incomplete_expired"), "reports", 0, False, "not_in_plan", "free"),
    (
        "cancel at period end, before",
        account("pro", "active", cancel_at_period_end=True),
        "sso",
        0,
        True,
        "ok",
        "pro",
    ),
    (
        "cancel at period end, after",
        account("pro", "active", cancel_at_period_end=True, current_period_end=days_ago(1)),
        "sso",
        0,
        False,
        "subscription_inactive",
        "free",
    ),
    ("tier gone from the catalog", account("legacy", "active"), "reports", 0, False, "not_in_plan", "free"),
]


@pytest.mark.parametrize(
    ("acct", "feature", "used", "allow", "reason", "tier"),
    [pytest.param(*row[1:], id=row[0]) for row in DECISIONS],
)
def test_decision(
    engine: Any, acct: dict[str, Any] | None, feature: str, used: int, allow: bool, reason: str, tier: str
) -> None:
    decision = decide(engine, acct, feature, used)
    assert (decision["allow"], decision["reason"], decision["tier"]) == (allow, reason, tier)
    assert decision["paid_tier"] == (acct["tier"] if acct else None)
    shape = {
        "allow",
        "reason",
        "tier",
        "paid_tier",
        "limit",
        "used",
        "remaining",
        "valid_until",
        "license_grace_until",
        "credits",
    }
    over_limit = not allow and decision["limit"] is not None  # limit_exceeded, or its downgrade
    metered_allow = allow and decision["limit"] is not None
    assert set(decision) == shape | (
        {"used_bound"} if metered_allow else {"used_floor"} if over_limit else set()
    )
    if metered_allow:  # the answer holds while used + quantity fits the limit (docs/policies.md)
        assert decision["used_bound"] == decision["limit"] - 1
    if over_limit:  # and the deny while used + quantity stays over it
        assert decision["used_floor"] == decision["limit"]


@pytest.mark.parametrize(
    ("acct", "valid_until"),
    [
        pytest.param(None, PERIOD["end"], id="period end"),
        pytest.param(account("pro", "trialing", trial_end=LATER), LATER, id="trial end"),
        pytest.param(
            account("pro", "past_due", past_due_since=days_ago(1)), "2026-11-30T10:00:00Z", id="grace end"
        ),
        pytest.param(
            account("pro", "active", cancel_at_period_end=True, current_period_end=LATER), LATER, id="cancel"
        ),
    ],
)
def test_valid_until(engine: Any, acct: dict[str, Any] | None, valid_until: str) -> None:
    assert decide(engine, acct, "dashboards")["valid_until"] == valid_until


def test_metered_numbers(engine: Any) -> None:
    decision = decide(engine, account("starter", "active"), "api_calls", 150)
    assert (decision["limit"], decision["used"], decision["remaining"]) == (20000, 150, 19850)


@pytest.mark.parametrize(
    ("method", "path", "index", "feature", "usage"),
    [
        ("POST", "/api/v1/reports/monthly", 0, "reports", "api_calls"),
        ("GET", "/api/v1/reports/monthly/pdf", 1, "reports", None),
        ("POST", "/api/v1/exports", 2, "exports", "exports"),
        ("DELETE", "/api/v1/audit/entries/7", 3, "audit_log", None),
        ("GET", "/sso/login", 4, "sso", None),
        ("PUT", "/api/v1/widgets/9", 5, None, "api_calls"),
        ("GET", "/api/v1/exports", 5, None, "api_calls"),
    ],
)
def test_route(
    engine: Any, method: str, path: str, index: int, feature: str | None, usage: str | None
) -> None:
    engine.set_input({"method": method, "path": path})
    route = engine.eval_rule("data.tiergate.ingress.route")
    assert route == {"matched": True, "index": index, "feature": feature, "usage": usage, "action": "check"}


def test_unmatched_route_follows_the_catalog(engine: Any) -> None:
    engine.set_input({"method": "GET", "path": "/healthz"})
    route = engine.eval_rule("data.tiergate.ingress.route")
    assert route == {"matched": False, "index": None, "feature": None, "usage": None, "action": "allow"}
