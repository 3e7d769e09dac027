"""Credits, the pure part: exact credit amounts, what a use costs, and the burn order of grants.

Both processes use this module: the daemon debits its ledger in burn order, the sidecar compares a
balance with a cost. Amounts follow tiergate/amounts.py (an `int` when whole, else a `Decimal`;
never a float), with at most a credit type's `decimals` digits after the point (at most 6). A cost
times a quantity that needs more digits than its type keeps is rounded *up* to the type's
precision: a use is never charged less than it costs (docs/adr/0042-credits-ledger.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Literal

from tiergate.amounts import MAX_SCALE, Amount, AmountError, add, event_amount, exact, negate

Category = Literal["paid", "promotional"]
CATEGORIES: tuple[Category, ...] = ("paid", "promotional")
MAX_CREDITS = 10**12  # the largest amount one grant, pack or cost may carry
_EXACT = Context(prec=80, traps=[Inexact, InvalidOperation, Overflow])
_NEVER = datetime.max.replace(tzinfo=UTC)  # a grant without an expiry sorts after every expiry
_ROUND_UP = Context(prec=80, rounding=ROUND_CEILING, traps=[InvalidOperation, Overflow])  # rounds on purpose


def credit_amount(value: object, decimals: int = MAX_SCALE, *, positive: bool = True) -> Amount:
    """An exact amount of credits from a document (int, decimal string, or a float's shortest
    repr) with at most `decimals` digits after the point; raises AmountError naming the rule."""
    amount = event_amount(value, MAX_CREDITS)
    if positive and amount <= 0:
        raise AmountError(f"must be more than 0, got {value!r}")
    if scale(amount) > decimals:
        raise AmountError(f"has more than {decimals} digits after the decimal point, got {value!r}")
    return amount


def scale(amount: Amount) -> int:
    """How many digits after the point an exact amount needs."""
    if isinstance(amount, int):
        return 0
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def subtract(left: Amount, right: Amount) -> Amount:
    return add(left, negate(right))


def cost_of(unit_cost: Amount, quantity: Amount, decimals: int) -> Amount:
    """What `quantity` units cost at `unit_cost` each, rounded up to `decimals` digits."""
    product = _EXACT.multiply(Decimal(unit_cost), Decimal(quantity))
    rounded = product.quantize(Decimal(1).scaleb(-decimals), context=_ROUND_UP)
    return exact(rounded)


@dataclass(frozen=True)
class LiveGrant:
    """What the burn order needs to know of one grant that may still be spent."""

    id: str
    remaining: Amount
    category: Category
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    created: int  # creation order (the ledger's row order): the oldest first among equals

    def spendable(self, now: datetime) -> bool:
        in_force = self.effective_at <= now and (self.expires_at is None or now < self.expires_at)
        return in_force and self.remaining > 0


def burn_key(grant: LiveGrant) -> tuple[int, datetime, int, datetime, int]:
    """Priority (lower first), then the soonest expiry (none last), then promotional before paid,
    then the oldest."""
    expiry = grant.expires_at or _NEVER
    return (
        grant.priority,
        expiry,
        0 if grant.category == "promotional" else 1,
        grant.effective_at,
        grant.created,
    )


@dataclass(frozen=True)
class Allocation:
    """A debit split over grants in burn order, and what no grant could cover."""

    taken: tuple[tuple[str, Amount], ...]
    shortfall: Amount


def allocate(grants: Iterable[LiveGrant], amount: Amount, now: datetime) -> Allocation:
    """Take `amount` from the spendable grants in burn order; the rest is the shortfall."""
    if amount < 0:
        raise AmountError(f"a debit is at least 0, got {amount}")
    left: Amount = amount
    taken: list[tuple[str, Amount]] = []
    for grant in sorted((g for g in grants if g.spendable(now)), key=burn_key):
        if left <= 0:
            break
        part = grant.remaining if grant.remaining <= left else left
        taken.append((grant.id, part))
        left = subtract(left, part)
    return Allocation(tuple(taken), left)


def balance(grants: Sequence[LiveGrant], now: datetime, overdraft: Amount = 0) -> Amount:
    """What may be spent now: the spendable grants' remaining, less a debt not yet repaid."""
    total: Amount = 0
    for grant in grants:
        if grant.spendable(now):
            total = add(total, grant.remaining)
    return subtract(total, overdraft)


def next_expiry(grants: Sequence[LiveGrant], now: datetime) -> datetime | None:
    expiries = [g.expires_at for g in grants if g.spendable(now) and g.expires_at is not None]
    return min(expiries) if expiries else None


def affordable(balance_now: Amount, pending: Amount, held: Amount, cost: Amount) -> bool:
    """The sidecar's credit check: balance - pending local usage - holds >= cost."""
    return subtract(subtract(balance_now, pending), held) >= cost


def crossed_below(before: Amount, after: Amount, threshold: Amount) -> bool:
    """True exactly once per crossing: the balance went from at or above `threshold` to below it."""
    return before >= threshold > after
