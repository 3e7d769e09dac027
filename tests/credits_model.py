"""A reference model of the credits' burn order, written as the issue states the rule (filter by
each criterion in turn), not as tiergate/credits.py sorts: the property tests compare the two."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import strategies as st

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class ModelGrant:
    name: str
    remaining: Decimal
    category: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    created: int


def spend(grants: list[ModelGrant], amount: Decimal, now: datetime) -> tuple[dict[str, Decimal], Decimal]:
    """Take `amount` one grant at a time: the lowest priority number; among those the soonest
    expiry (none is latest); among those promotional if any; among those the oldest."""
    left = {g.name: g.remaining for g in grants}
    taken: dict[str, Decimal] = {}
    while amount > 0:
        usable = [
            g
            for g in grants
            if left[g.name] > 0 and g.effective_at <= now and (g.expires_at is None or now < g.expires_at)
        ]
        if not usable:
            break
        top = min(g.priority for g in usable)
        usable = [g for g in usable if g.priority == top]
        expiring = [g for g in usable if g.expires_at is not None]
        if expiring:
            soonest = min(g.expires_at for g in expiring if g.expires_at is not None)
            usable = [g for g in expiring if g.expires_at == soonest]
        promotional = [g for g in usable if g.category == "promotional"]
        usable = promotional or usable
        oldest = min((g.effective_at, g.created) for g in usable)
        chosen = next(g for g in usable if (g.effective_at, g.created) == oldest)
        part = min(left[chosen.name], amount)
        left[chosen.name] -= part
        taken[chosen.name] = taken.get(chosen.name, Decimal(0)) + part
        amount -= part
    return taken, amount


amounts = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(50), places=3)
one_grant = st.tuples(
    amounts,
    st.sampled_from(["paid", "promotional"]),
    st.sampled_from([0, 10, 50]),
    st.integers(min_value=-3, max_value=1),  # effective: days from NOW (1: not yet)
    st.one_of(st.none(), st.integers(min_value=0, max_value=5)),  # expires: days from NOW (0: expired)
)


def model_grants(drawn: list[tuple[Decimal, str, int, int, int | None]]) -> list[ModelGrant]:
    return [
        ModelGrant(
            f"g{n}",
            amount,
            category,
            priority,
            NOW + timedelta(days=effective),
            None if expires is None else NOW + timedelta(days=expires),
            n,
        )
        for n, (amount, category, priority, effective, expires) in enumerate(drawn)
    ]
