"""`input.credits` of the policy (pure): for a credit-priced feature, whether the tenant can afford it.

The arithmetic is exact and done here, not in Rego (whose numbers are binary doubles, ADR 16):
for each tier that prices the feature (and for an override that does), the check compares what is
available, the replica's balance at this instant less the credits of usage this sidecar accepted
that the replica does not include yet (pending) and of holds, with the cost of `quantity` units.
The policy reads `input.credits.tiers[<the tier that applies>]` (or `.override`) and decides
(policies/entitlements.rego, docs/credits.md). Amounts are JSON integers or decimal strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from tiergate.amounts import Amount, add, stored
from tiergate.catalog import Catalog, Quota
from tiergate.credits import affordable, cost_of, subtract
from tiergate.feed import FeedCredits
from tiergate.periods import rfc3339

# (tenant, credit type) -> credits held by holds not yet settled (the holds' own view); 0 without.
HeldCredits = Callable[[str, str], Amount]


def no_holds(tenant: str, credit_type: str) -> Amount:
    return 0


def hold_cost(
    catalog: Catalog, tier: str | None, feature: str, quantity: Amount
) -> tuple[str, Amount] | None:
    """(credit type, credits) that holding `quantity` of `feature` takes on `tier` (the default
    tier's price without one); None when the feature is not credit-priced there. For the holds:
    their sum per type is what `DecisionService.held_credits` answers."""
    applied = tier if tier in catalog.tiers else catalog.default_tier
    price = catalog.credit_cost(applied, feature)
    if price is None:
        return None
    credit_type, unit_cost = price
    decimals = catalog.credits[credit_type].decimals if credit_type in catalog.credits else 6
    return credit_type, cost_of(unit_cost, quantity, decimals)


def credit_priced(catalog: Catalog, feature: str) -> bool:
    """Whether any tier prices `feature` in credits (its answers depend on balances)."""
    return any(catalog.credit_cost(tier, feature) is not None for tier in catalog.tiers)


def credits_input(
    catalog: Catalog,
    *,
    tenant: str,
    feature: str,
    quantity: int,
    account_tier: str | None,
    states: Mapping[str, FeedCredits],
    pending: Callable[[str], Amount],
    held: HeldCredits,
    override_value: object,
    now: datetime,
) -> dict[str, Any] | None:
    """The checks of every way the feature may be priced; None when nothing prices it.

    `pending(code)`: the usage of `code` this sidecar accepted that the replica lacks."""
    sources: dict[str, tuple[str, Amount]] = {}
    for tier in catalog.tiers:
        price = catalog.credit_cost(tier, feature)
        if price is not None:
            sources[tier] = price
    override_price = override_value.credit_cost if isinstance(override_value, Quota) else None
    if not sources and override_price is None:
        return None
    pricing_tier = account_tier if account_tier in catalog.tiers else catalog.default_tier

    def check(price: tuple[str, Amount], tier: str) -> dict[str, Any]:
        credit_type, unit_cost = price
        decimals = catalog.credits[credit_type].decimals if credit_type in catalog.credits else 6
        need = cost_of(unit_cost, quantity, decimals)
        state = states.get(credit_type)
        balance = state.balance(now) if state is not None else 0
        used = _pending_credits(catalog, tier, credit_type, pending, decimals)
        on_hold = held(tenant, credit_type)
        available = subtract(subtract(balance, used), on_hold)
        return {
            "type": credit_type,
            "balance": stored(available),
            "cost": stored(need),
            "sufficient": affordable(balance, used, on_hold, need),
            "changes_at": rfc3339(state.next_change(now)) if state is not None else None,
        }

    document: dict[str, Any] = {"tiers": {tier: check(price, tier) for tier, price in sources.items()}}
    if override_price is not None:
        document["override"] = check(override_price, pricing_tier)
    return document


def balances(
    catalog: Catalog,
    *,
    tenant: str,
    account_tier: str | None,
    states: Mapping[str, FeedCredits],
    pending: Callable[[str], Amount],
    held: HeldCredits,
    now: datetime,
) -> dict[str, dict[str, Any]]:
    """Each credit type the tenant holds: what is available now (as a check would count it) and
    the next expiry, for /v1/entitlements."""
    tier = account_tier if account_tier in catalog.tiers else catalog.default_tier
    found: dict[str, dict[str, Any]] = {}
    for credit_type, state in sorted(states.items()):
        decimals = catalog.credits[credit_type].decimals if credit_type in catalog.credits else 6
        used = _pending_credits(catalog, tier, credit_type, pending, decimals)
        available = subtract(subtract(state.balance(now), used), held(tenant, credit_type))
        found[credit_type] = {"balance": stored(available), "next_expiry": rfc3339(state.next_expiry(now))}
    return found


def _pending_credits(
    catalog: Catalog, tier: str, credit_type: str, pending: Callable[[str], Amount], decimals: int
) -> Amount:
    """What the pending usage of every code priced in `credit_type` on `tier` will cost."""
    total: Amount = 0
    for code in _priced_codes(catalog, tier, credit_type):
        quantity = pending(code)
        if quantity > 0:
            total = add(total, cost_of(catalog_cost(catalog, tier, code), quantity, decimals))
    return total


def _priced_codes(catalog: Catalog, tier: str, credit_type: str) -> Iterable[str]:
    for code in catalog.tiers[tier].features:
        price = catalog.credit_cost(tier, code)
        if price is not None and price[0] == credit_type:
            yield code


def catalog_cost(catalog: Catalog, tier: str, code: str) -> Amount:
    price = catalog.credit_cost(tier, code)
    assert price is not None
    return price[1]
