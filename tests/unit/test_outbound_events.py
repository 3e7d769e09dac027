"""Which outbound events an account change means, and the retry schedule (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tiergate.catalog import Quota, load_catalog
from tiergate.sync_daemon.mirror.store import MirrorAccount
from tiergate.sync_daemon.outbound.delivery import MAX_BACKOFF_S, backoff
from tiergate.sync_daemon.outbound.events import (
    entitlements_changed,
    grace_over,
    grace_started,
    plan_value,
    usage_limit,
    written,
)

CATALOG = load_catalog(Path(__file__).parents[2] / "plans" / "plans.yaml")
PRO = MirrorAccount(tenant="t_1", tier="pro", status="active", quantity=2)
CAUSE = {"stripe_event": "evt_1", "type": "customer.subscription.updated"}
SINCE = datetime(2026, 11, 1, tzinfo=UTC)


PRO_FEATURES = {
    "api_calls": {"limit": 100000},
    "audit_log": False,
    "dashboards": True,
    "exports": {},
    "reports": True,
    "seats": {"limit": 2},  # limit_by: quantity, capped at 25
    "sso": True,
    "storage_gb": {"limit": 100},
}


def test_only_what_changes_entitlements_is_an_event() -> None:
    assert entitlements_changed(PRO, PRO.replace(version=9, stripe_updated=5), CAUSE, CATALOG) is None
    moved = entitlements_changed(PRO, PRO.replace(addons=(("extra_storage", 1),)), CAUSE, CATALOG)
    assert moved is not None and moved["after"]["addons"] == {"extra_storage": 1}
    assert moved["before"]["features"]["storage_gb"] == {"limit": 100}
    assert moved["after"]["features"]["storage_gb"] == {"limit": 200}
    assert entitlements_changed(None, PRO, CAUSE, CATALOG) == {
        "tenant": "t_1",
        "before": None,
        "after": {
            "tier": "pro",
            "status": "active",
            "quantity": 2,
            "addons": {},
            "cancel_at_period_end": False,
            "features": PRO_FEATURES,
        },
        "cause": CAUSE,
    }


@pytest.mark.parametrize(
    ("account", "code", "expected"),
    [
        (PRO.replace(quantity=40), "seats", {"limit": 25}),  # bought 40, the tier caps at 25
        (PRO.replace(tier="enterprise", quantity=40), "seats", {"limit": 40}),  # no cap: what was bought
        (PRO.replace(addons=(("extra_storage", 3),)), "storage_gb", {"limit": 400}),  # 100 + 3 x 100
        (PRO.replace(addons=(("extra_storage", 0),)), "storage_gb", {"limit": 100}),
        (PRO.replace(addons=(("audit_pack", 1),)), "audit_log", True),  # an add-on turns it on
        (PRO.replace(tier="enterprise", addons=(("extra_storage", 1),)), "storage_gb", {}),  # unlimited stays
        (PRO.replace(status="canceled"), "sso", False),  # ended: the default tier's
        (PRO.replace(status="canceled"), "seats", {"limit": 3}),
        (None, "api_calls", {"limit": 1000}),
        (PRO.replace(tier="gone"), "dashboards", True),  # a tier the catalog lost: the default's
    ],
)
def test_a_features_value_on_the_plan_follows_the_policys_reading_of_the_catalog(
    account: MirrorAccount | None, code: str, expected: object
) -> None:
    assert written(plan_value(CATALOG, account, code)) == expected


def test_an_alerts_limit_is_the_overrides_else_the_plans() -> None:
    assert usage_limit(CATALOG, PRO.replace(tier="starter"), "exports", None) == 200
    assert usage_limit(CATALOG, PRO, "exports", None) is None  # pro: unlimited exports
    assert usage_limit(CATALOG, PRO, "exports", Quota(limit=10)) == 10
    assert usage_limit(CATALOG, PRO.replace(tier="starter"), "exports", True) is None


def test_grace_starts_once_per_episode_and_ends_after_the_tiers_grace_days() -> None:
    overdue = PRO.replace(status="past_due", past_due_since=SINCE)
    started = grace_started(PRO, overdue, CATALOG)
    assert started is not None and started["grace_ends_at"] == "2026-11-08T00:00:00Z"  # pro: 7 days
    assert grace_started(overdue, overdue.replace(payment_attempts=2), CATALOG) is None
    assert grace_over(overdue, CATALOG, SINCE + timedelta(days=6)) is None
    ended = grace_over(overdue, CATALOG, SINCE + timedelta(days=7))
    assert ended is not None and ended[0] == "payment.overdue.grace_over|t_1|2026-11-01T00:00:00Z"
    assert grace_over(PRO, CATALOG, SINCE + timedelta(days=70)) is None


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, 2.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff(40, 2.0) == MAX_BACKOFF_S
