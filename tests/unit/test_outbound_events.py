"""Which outbound events an account change means, and the retry schedule (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sync_daemon.mirror.store import MirrorAccount
from sync_daemon.outbound.delivery import MAX_BACKOFF_S, backoff
from sync_daemon.outbound.events import entitlements_changed, grace_over, grace_started
from tiergate.catalog import load_catalog

CATALOG = load_catalog(Path(__file__).parents[2] / "plans" / "plans.yaml")
PRO = MirrorAccount(tenant="t_1", tier="pro", status="active", quantity=2)
CAUSE = {"stripe_event": "evt_1", "type": "customer.subscription.updated"}
SINCE = datetime(2026, 11, 1, tzinfo=UTC)


def test_only_what_changes_entitlements_is_an_event() -> None:
    assert entitlements_changed(PRO, PRO.replace(version=9, stripe_updated=5), CAUSE) is None
    moved = entitlements_changed(PRO, PRO.replace(addons=(("extra_storage", 1),)), CAUSE)
    assert moved is not None and moved["after"]["addons"] == {"extra_storage": 1}
    assert entitlements_changed(None, PRO, CAUSE) == {
        "tenant": "t_1",
        "before": None,
        "after": {
            "tier": "pro",
            "status": "active",
            "quantity": 2,
            "addons": {},
            "cancel_at_period_end": False,
        },
        "cause": CAUSE,
    }


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
