"""What a candidate catalog changes in Stripe prices, compared with the live one (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tiergate.catalog import Catalog


@dataclass(frozen=True)
class PriceChange:
    tier: str
    interval: str
    current: dict[str, Any] | None
    candidate: dict[str, Any] | None
    tenants: int  # accounts on this tier now (0 when no replica was read)


def price_changes(
    current: Catalog, candidate: Catalog, tenants_per_tier: Mapping[str, int]
) -> list[PriceChange]:
    """Every (tier, interval) whose Stripe price differs: added, removed or changed."""
    changes = []
    for tier in sorted(set(current.tiers) | set(candidate.tiers)):
        before = current.tiers[tier].prices if tier in current.tiers else {}
        after = candidate.tiers[tier].prices if tier in candidate.tiers else {}
        for interval in sorted(set(before) | set(after)):
            old, new = before.get(interval), after.get(interval)
            old_json = old.model_dump(mode="json") if old else None
            new_json = new.model_dump(mode="json") if new else None
            if old_json != new_json:
                changes.append(PriceChange(tier, interval, old_json, new_json, tenants_per_tier.get(tier, 0)))
    return changes


def describe_price(price: Mapping[str, Any] | None) -> str:
    """`49.00 usd (pro_month)`, or `none` for a price added or removed."""
    if price is None:
        return "none"
    return f"{price['unit_amount'] / 100:.2f} {price['currency']} ({price['lookup_key']})"
