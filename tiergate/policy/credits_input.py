"""`input.credits` of the policy (pure): for a credit-priced feature, whether the tenant can afford it.

The arithmetic is exact and done here, not in Rego (whose numbers are binary doubles, ADR 16):
for each tier that prices the feature (and for an override that does), the check compares what is
available, the replica's balance at this instant less the credits of usage this sidecar accepted
that the replica does not include yet (pending: active holds are in it, docs/holds.md), with the
cost of `quantity` units.
The policy reads `input.credits.tiers[<the tier that applies>]` (or `.override`) and decides
(policies/entitlements.rego, docs/credits.md). Amounts are JSON integers or decimal strings.

`CreditPrices` indexes a catalog's prices once (a catalog is immutable): a check then costs a few
dictionary lookups and, per credit type, one balance (bench/credits_check.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tiergate.amounts import Amount, add, stored
from tiergate.catalog import Catalog, Quota
from tiergate.credits import cost_of, subtract
from tiergate.feed import FeedCredits
from tiergate.periods import rfc3339

Price = tuple[str, Amount]  # (credit type, cost of one unit)


class CreditPrices:
    """A catalog's credit prices, indexed for the decision path."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.default_tier = catalog.default_tier
        self.decimals = {name: kind.decimals for name, kind in catalog.credits.items()}
        self.by_feature: dict[str, dict[str, Price]] = {}  # feature -> tier -> price
        self.codes: dict[tuple[str, str], list[tuple[str, Amount]]] = {}  # (tier, type) -> [(code, cost)]
        for tier_name, tier in catalog.tiers.items():
            for feature, value in tier.features.items():
                price = value.credit_cost if isinstance(value, Quota) else None
                if price is not None:
                    self.by_feature.setdefault(feature, {})[tier_name] = price
                    self.codes.setdefault((tier_name, price[0]), []).append((feature, price[1]))

    def priced(self, feature: str) -> bool:
        return feature in self.by_feature

    def cost(self, credit_type: str, unit_cost: Amount, quantity: Amount) -> Amount:
        if quantity == 1:
            return unit_cost  # the catalog holds it to the type's decimals
        return cost_of(unit_cost, quantity, self.decimals.get(credit_type, 6))

    def pending_credits(self, tier: str, credit_type: str, pending: Mapping[str, Amount]) -> Amount:
        """What the pending usage (by code) of every code priced in `credit_type` on `tier` will cost."""
        total: Amount = 0
        if not pending:
            return total
        for code, unit_cost in self.codes.get((tier, credit_type), ()):
            quantity = pending.get(code, 0)
            if quantity > 0:
                total = add(total, self.cost(credit_type, unit_cost, quantity))
        return total


def override_quota(value: object) -> Quota | None:
    """An override's value (`{limit, credits}` as stored) as a Quota; None for true/false/invalid."""
    if not isinstance(value, dict):
        return None
    try:
        return Quota.model_validate(value)
    except ValueError:
        return None


def credits_input(
    prices: CreditPrices,
    *,
    feature: str,
    quantity: int,
    account_tier: str | None,
    states: Mapping[str, FeedCredits],
    pending: Mapping[str, Amount],
    override_value: object,
    now: datetime,
    period_end: str | None = None,
) -> dict[str, Any] | None:
    """The checks of every way the feature may be priced on a tier that can apply (the account's,
    the default) or by an override; None when nothing prices it.

    `{"balances": {type: {"balance", "changes_at"}}, "tiers": {tier: check}, "override": check}`,
    a check being `{"type", "cost", "sufficient"}`. A balance is what is available: the replica's
    at `now`, less the pending usage (`pending`: what this sidecar accepted that the replica
    lacks and what its active holds take, by code, whatever their period) priced as the daemon will
    debit it (on the account's tier). A change
    at or after `period_end` (which bounds every answer already) is left out."""
    sources = prices.by_feature.get(feature)
    override_price = override_value.credit_cost if isinstance(override_value, Quota) else None
    if sources is None and override_price is None:
        return None
    pricing_tier = account_tier if account_tier in prices.catalog.tiers else prices.default_tier
    available: dict[str, dict[str, Any]] = {}
    amounts: dict[str, Amount] = {}

    def check(price: Price) -> dict[str, Any]:
        credit_type, unit_cost = price
        if credit_type not in amounts:
            amounts[credit_type], available[credit_type] = _available(
                prices, credit_type, states.get(credit_type), pricing_tier, pending, now
            )
            changes_at = available[credit_type]["changes_at"]
            if changes_at is not None and period_end is not None and changes_at >= period_end:
                available[credit_type]["changes_at"] = None  # the period's end comes first anyway
        need = prices.cost(credit_type, unit_cost, quantity)
        return {"type": credit_type, "cost": stored(need), "sufficient": amounts[credit_type] >= need}

    # Only the tiers that can apply: the subscribed one, or the default one (ended, restricted).
    applicable = (pricing_tier, prices.default_tier)
    tiers = {tier: check(price) for tier, price in (sources or {}).items() if tier in applicable}
    document: dict[str, Any] = {"tiers": tiers}
    if override_price is not None:
        document["override"] = check(override_price)
    document["balances"] = available
    return document


def _available(
    prices: CreditPrices,
    credit_type: str,
    state: FeedCredits | None,
    tier: str,
    pending: Mapping[str, Amount],
    now: datetime,
) -> tuple[Amount, dict[str, Any]]:
    balance, text, changes_at = state.at(now) if state is not None else (0, 0, None)
    used = prices.pending_credits(tier, credit_type, pending)
    if used:
        balance = subtract(balance, used)
        text = stored(balance)
    return balance, {"balance": text, "changes_at": changes_at}


def balances(
    prices: CreditPrices,
    *,
    account_tier: str | None,
    states: Mapping[str, FeedCredits],
    pending: Mapping[str, Amount],
    now: datetime,
) -> dict[str, dict[str, Any]]:
    """Each credit type the tenant holds: what is available now (as a check would count it) and
    the next expiry, for /v1/entitlements."""
    tier = account_tier if account_tier in prices.catalog.tiers else prices.default_tier
    found: dict[str, dict[str, Any]] = {}
    for credit_type, state in sorted(states.items()):
        used = prices.pending_credits(tier, credit_type, pending)
        available = subtract(state.balance(now), used)
        found[credit_type] = {"balance": stored(available), "next_expiry": rfc3339(state.next_expiry(now))}
    return found
