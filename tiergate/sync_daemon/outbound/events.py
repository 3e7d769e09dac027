"""Pure: which outbound events a change of an account means (no I/O; unit-tested without a loop)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tiergate.amounts import Amount, stored
from tiergate.catalog import AddonLimit, Catalog, Quota
from tiergate.periods import rfc3339
from tiergate.sync_daemon.mirror.store import MirrorAccount


def snapshot(account: MirrorAccount | None, catalog: Catalog) -> dict[str, Any] | None:
    if account is None:
        return None
    return {
        "tier": account.tier,
        "status": account.status,
        "quantity": account.quantity,
        "addons": dict(account.addons),
        "cancel_at_period_end": account.cancel_at_period_end,
        "features": {code: written(plan_value(catalog, account, code)) for code in sorted(catalog.features)},
    }


def entitlements_changed(
    before: MirrorAccount | None, after: MirrorAccount | None, cause: dict[str, Any], catalog: Catalog
) -> dict[str, Any] | None:
    """The `entitlements.changed` data when a watched field moved; None otherwise."""
    old, new = snapshot(before, catalog), snapshot(after, catalog)
    if old == new:
        return None
    either = after or before
    return {
        "tenant": either.tenant if either is not None else None,
        "before": old,
        "after": new,
        "cause": cause,
    }


# -- a feature's value on the account's plan, as policies/entitlements.rego reads the catalog -----

Value = bool | Quota


def plan_value(catalog: Catalog, account: MirrorAccount | None, code: str) -> Value:
    """Feature `code` on the account's plan: the subscribed tier's value with the quantity bought
    (`limit_by: quantity`) and the add-ons held; the default tier's once the subscription has
    ended (or without an account). Overrides and a past-due restriction are not applied here."""
    live = (
        account is not None
        and account.tier in catalog.tiers
        and account.status not in ("canceled", "incomplete_expired")
    )
    if not live or account is None:
        return catalog.tiers[catalog.default_tier].features.get(code, False)
    value = catalog.tiers[account.tier].features.get(code, False)
    return _with_addons(_purchased(value, account.quantity), catalog, account, code)


def _purchased(value: Value, quantity: int) -> Value:
    """`limit_by: quantity`: the limit is what the customer bought, capped by `limit` if given."""
    if not isinstance(value, Quota) or value.limit_by != "quantity":
        return value
    return Quota(limit=quantity if value.limit is None else min(value.limit, quantity))


def _with_addons(value: Value, catalog: Catalog, account: MirrorAccount, code: str) -> Value:
    effects = [
        (catalog.addons[name].features[code], quantity)
        for name, quantity in account.addons
        if quantity > 0 and name in catalog.addons and code in catalog.addons[name].features
    ]
    if not effects:
        return value
    bonus = sum(effect.add_limit * n for effect, n in effects if isinstance(effect, AddonLimit))
    if isinstance(value, Quota) and value.limit is not None:
        return Quota(limit=value.limit + bonus)
    if value is not False:  # true or unlimited: nothing to add
        return value
    if bonus > 0:
        return Quota(limit=bonus)
    return any(effect is True for effect, _ in effects)


def written(value: Value) -> bool | dict[str, int]:
    """As the catalog writes it: true, false, {"limit": N}, or {} for unlimited."""
    if isinstance(value, Quota):
        return {} if value.limit is None else {"limit": value.limit}
    return value


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
    """The tenant's limit of metric `code` for alerts: an override's, else its plan's
    (`plan_value`); None when unlimited or not a limit. A restricted subscription is not
    resolved here (alerts only warn)."""
    value = override if override is not None else plan_value(catalog, account, code)
    return value.limit if isinstance(value, Quota) else None


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
