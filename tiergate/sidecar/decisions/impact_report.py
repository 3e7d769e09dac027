"""The report of `tiergate plans diff`: who each change reaches, as a table or JSON, and the
`--fail-on` gate CI uses to stop a catalog or policy change that would hurt tenants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tiergate.catalog_diff import PriceChange, describe_price

Change = Literal["gain", "lose", "over_limit", "limit_changed", "cost_changed", "grant_changed"]
# Per feature; `over_limit` is also a tenant short of credits at a new price, `cost_changed` one
# whose credit price moves (type or cost) with the answer otherwise the same.
CHANGES: tuple[Change, ...] = ("gain", "lose", "over_limit", "limit_changed", "cost_changed")
EXAMPLES = 20  # tenant ids kept (and named in the table) per feature and kind of change
HEADINGS = {
    "gain": "gain",
    "lose": "lose",
    "over_limit": "over new limit",
    "limit_changed": "limit changed",
    "cost_changed": "cost changed",
    "grant_changed": "plan grants changed",
}

# `--fail-on` choices: a kind of change (with --impact), a price change, or any of them.
FAIL_ON: dict[str, str] = {
    "lose": "a tenant loses a feature it has now",
    "over-limit": "a tenant is over a new limit at its current usage",
    "limit-changed": "a tenant keeps a feature under another limit",
    "cost-changed": "a tenant pays another credit price for a feature",
    "grant-changed": "a tenant's plan grants of credits change",
    "gain": "a tenant gains a feature",
    "price": "a Stripe price is added, removed or changed",
    "any": "any of the above",
}
_FAIL_ON_CHANGE: dict[str, Change] = {
    "lose": "lose",
    "over-limit": "over_limit",
    "limit-changed": "limit_changed",
    "cost-changed": "cost_changed",
    "grant-changed": "grant_changed",
    "gain": "gain",
}


@dataclass
class FeatureImpact:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, change: Change, tenant: str) -> None:
        self.counts[change] += 1
        kept = self.examples.setdefault(change, [])
        if len(kept) < EXAMPLES:
            kept.append(tenant)

    def merge(self, other: FeatureImpact) -> None:
        self.counts.update(other.counts)
        for change, tenants in other.examples.items():
            kept = self.examples.setdefault(change, [])
            kept.extend(tenants[: EXAMPLES - len(kept)])


@dataclass
class ImpactReport:
    tenants: int
    now: str
    current_revision: str
    candidate_revision: str
    features: dict[str, FeatureImpact]
    prices: list[PriceChange]
    grants: dict[str, FeatureImpact] = field(default_factory=dict)  # credit type -> grant_changed
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # spent evaluating, summed over the workers

    def to_json(self) -> dict[str, Any]:
        return {
            "tenants": self.tenants,
            "now": self.now,
            "current": {"revision": self.current_revision},
            "candidate": {"revision": self.candidate_revision},
            "features": {
                name: {**{c: impact.counts.get(c, 0) for c in CHANGES}, "examples": impact.examples}
                for name, impact in sorted(self.features.items())
            },
            "credits": {
                kind: {"grant_changed": impact.counts.get("grant_changed", 0), "examples": impact.examples}
                for kind, impact in sorted(self.grants.items())
            },
            "prices": [p.__dict__ for p in self.prices],
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
        }

    def totals(self) -> Counter[str]:
        """Tenant-feature pairs per kind of change, over every feature (and tenant-credit type
        pairs for `grant_changed`)."""
        total: Counter[str] = Counter()
        for impact in self.features.values():
            total.update(impact.counts)
        for impact in self.grants.values():  # tenant-credit type pairs
            total.update(impact.counts)
        return total


def parse_fail_on(text: str) -> tuple[str, ...]:
    """`lose,over-limit` -> its choices; a ValueError naming the unknown one and the allowed ones."""
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in FAIL_ON]
    if unknown or not chosen:
        raise ValueError(
            f"{(unknown or [text])[0]!r} is not a choice; give one or more of {', '.join(FAIL_ON)}"
        )
    return tuple(FAIL_ON) if "any" in chosen else chosen


def needs_impact(fail_on: Iterable[str]) -> list[str]:
    """The chosen kinds that only an impact run (--impact) can find."""
    return [kind for kind in fail_on if kind in _FAIL_ON_CHANGE]


def tripped(fail_on: Iterable[str], totals: Mapping[str, int], prices: int) -> list[str]:
    """`over-limit: 3` for each chosen kind the diff found (empty: the gate passes)."""
    found = []
    for kind in fail_on:
        count = prices if kind == "price" else totals.get(_FAIL_ON_CHANGE.get(kind, ""), 0)
        if kind != "any" and count:
            found.append(f"{kind}: {count}")
    return found


def render_table(report: ImpactReport) -> str:
    """The counts per feature, then the tenants each change reaches (the first EXAMPLES), then prices."""
    lines = [
        f"{report.tenants:,} tenants at {report.now}: bundle {report.current_revision} -> "
        f"{report.candidate_revision} ({report.seconds:.1f} s)",
        "",
        f"{'feature':<20}" + "".join(f"{HEADINGS[c]:>{w}}" for c, w in zip(CHANGES, WIDTHS, strict=True)),
    ]
    for name, impact in sorted(report.features.items()):
        counts = [impact.counts.get(c, 0) for c in CHANGES]
        lines.append(f"{name:<20}" + "".join(f"{n:>{w},}" for n, w in zip(counts, WIDTHS, strict=True)))
    lines += grant_lines(report.grants)
    named = list(tenant_lines(report.features)) + list(tenant_lines(report.grants, ("grant_changed",)))
    if named:
        lines += ["", "tenants:", *named]
    lines.append("")
    lines += price_lines(report.prices, with_tenants=True)
    return "\n".join(lines)


WIDTHS = (10, 10, 16, 15, 14)


def grant_lines(grants: Mapping[str, FeatureImpact]) -> list[str]:
    """`credits ai_credits: plan grants change for 12 tenants` per credit type, after a blank line."""
    moved = [
        f"credits {kind}: plan grants change for {impact.counts.get('grant_changed', 0):,} tenants"
        for kind, impact in sorted(grants.items())
    ]
    return ["", *moved] if moved else []


def tenant_lines(features: Mapping[str, FeatureImpact], changes: Iterable[Change] = CHANGES) -> Iterable[str]:
    """`  api_calls, over new limit: t1, t2 (and 38 more)` for each feature and change with tenants."""
    for name, impact in sorted(features.items()):
        for change in changes:
            shown = impact.examples.get(change, [])
            if not shown:
                continue
            more = impact.counts.get(change, 0) - len(shown)
            tail = f" (and {more:,} more; --json for the report)" if more > 0 else ""
            yield f"  {name}, {HEADINGS[change]}: {', '.join(shown)}{tail}"


def price_lines(prices: Iterable[PriceChange], *, with_tenants: bool) -> list[str]:
    """A line per price change, or `prices: unchanged`."""
    lines = []
    for change in prices:
        accounts = f" ({change.tenants:,} accounts on {change.tier})" if with_tenants else ""
        lines.append(
            f"price {change.tier}/{change.interval}: "
            f"{describe_price(change.current)} -> {describe_price(change.candidate)}{accounts}"
        )
    return lines or ["prices: unchanged"]
