"""Pure: which outbound events a change of an account means (no I/O; unit-tested without a loop)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sync_daemon.mirror.store import MirrorAccount
from tiergate.amounts import Amount, stored
from tiergate.catalog import AddonLimit, Catalog, Quota
from tiergate.periods import rfc3339

# What `entitlements.changed` reports: the fields that change what a tenant may do.
WATCHED = ("tier", "status", "quantity", "addons", "cancel_at_period_end")


def snapshot(account: MirrorAccount | None) -> dict[str, Any] | None:
    if account is None:
        return None
    return {
        "tier": account.tier,
        "status": account.status,
        "quantity": account.quantity,
        "addons": dict(account.addons),
        "cancel_at_period_end": account.cancel_at_period_end,
    }


def entitlements_changed(
    before: MirrorAccount | None, after: MirrorAccount | None, cause: dict[str, Any]
) -> dict[str, Any] | None:
    """The `entitlements.changed` data when a watched field moved; None otherwise."""
    old, new = snapshot(before), snapshot(after)
    if old == new:
        return None
    either = after or before
    return {
        "tenant": either.tenant if either is not None else None,
        "before": old,
        "after": new,
        "cause": cause,
    }


def grace_days(catalog: Catalog, tier: str) -> int:
    found = catalog.tiers.get(tier)
    return found.grace_days if found is not None else 0


def grace_started(
    before: MirrorAccount | None, after: MirrorAccount, catalog: Catalog
) -> dict[str, Any] | None:
    """`payment.overdue` (phase `grace_started`) when a past-due episode opens."""
    if after.past_due_since is None or (before is not None and before.past_due_since is not None):
        return None
    ends = after.past_due_since + timedelta(days=grace_days(catalog, after.tier))
    return {
        "tenant": after.tenant,
        "phase": "grace_started",
        "tier": after.tier,
        "past_due_since": rfc3339(after.past_due_since),
        "grace_ends_at": rfc3339(ends),
    }


def grace_over(account: MirrorAccount, catalog: Catalog, now: datetime) -> tuple[str, dict[str, Any]] | None:
    """(once-key, `payment.overdue` data with phase `grace_over`) once the grace has ended."""
    if account.past_due_since is None:
        return None
    ends = account.past_due_since + timedelta(days=grace_days(catalog, account.tier))
    if now < ends:
        return None
    key = f"payment.overdue.grace_over|{account.tenant}|{rfc3339(account.past_due_since)}"
    data = {
        "tenant": account.tenant,
        "phase": "grace_over",
        "tier": account.tier,
        "past_due_since": rfc3339(account.past_due_since),
        "grace_ends_at": rfc3339(ends),
    }
    return key, data


def usage_limit(
    catalog: Catalog, account: MirrorAccount | None, code: str, override: object | None
) -> int | None:
    """The tenant's limit of metric `code` as the shipped policy computes it, for alerts: an
    override's, else the subscribed (or default) tier's plus its add-ons'; None when unlimited or
    not a limit. A restricted subscription is not resolved here (alerts only warn)."""
    if isinstance(override, Quota):
        return override.limit
    if override is not None:
        return None
    live = (
        account is not None
        and account.tier in catalog.tiers
        and account.status not in ("canceled", "incomplete_expired")
    )
    tier = catalog.tiers[account.tier if live and account is not None else catalog.default_tier]
    value = tier.features.get(code)
    if not isinstance(value, Quota) or value.limit is None:
        return None
    limit = value.limit
    if value.limit_by == "quantity" and live and account is not None:
        limit = min(limit, account.quantity)
    for name, quantity in account.addons if live and account is not None else ():
        effect = catalog.addons[name].features.get(code) if name in catalog.addons else None
        if isinstance(effect, AddonLimit):
            limit += effect.add_limit * quantity
    return limit


def thresholds_reached(
    tenant: str, code: str, period_start: str, used: Amount, limit: int | None, alerts: list[float]
) -> list[tuple[str, dict[str, Any]]]:
    """(once-key, `usage.threshold_crossed` data) for each alert the counter has reached."""
    if limit is None or limit <= 0:
        return []
    return [
        (
            f"usage.threshold_crossed|{tenant}|{code}|{period_start}|{threshold:g}",
            {
                "tenant": tenant,
                "metric": code,
                "period_start": period_start,
                "threshold": threshold,
                "limit": limit,
                "used": stored(used),  # a decimal as a string
            },
        )
        for threshold in sorted(alerts)
        if used >= threshold * limit
    ]
