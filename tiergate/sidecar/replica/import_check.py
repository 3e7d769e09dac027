"""An import document checked against the catalog: tiers and usage codes it does not know (pure).

An account on an unknown tier silently gets the default tier, and a counter for an unknown code
counts for nothing, so `tiergate replica import` refuses them unless told `--allow-unknown`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tiergate.catalog import Catalog
from tiergate.sidecar.replica.store import ReplicaDocument

SHOWN = 5  # unknown names listed in a message; the counts cover all of them


@dataclass(frozen=True)
class UnknownToCatalog:
    tiers: Counter[str]  # tier -> accounts on it
    codes: Counter[str]  # usage code -> counters for it

    def __bool__(self) -> bool:
        return bool(self.tiers or self.codes)

    def describe(self, catalog: Catalog) -> list[str]:
        """One line per kind of problem, with counts, the unknown names and the known ones."""
        lines = []
        if self.tiers:
            lines.append(
                f"{self.tiers.total()} accounts are on tiers the catalog does not have: "
                f"{_named(self.tiers)}; they would get the default tier {catalog.default_tier!r} "
                f"(tiers: {sorted(catalog.tiers)})"
            )
        if self.codes:
            lines.append(
                f"{self.codes.total()} usage counters are for codes the catalog does not meter: "
                f"{_named(self.codes)}; no decision would read them (metrics: {sorted(catalog.metrics)})"
            )
        return lines


def unknown_to_catalog(document: ReplicaDocument, catalog: Catalog) -> UnknownToCatalog:
    tiers = Counter(a.tier for a in document.accounts if a.tier not in catalog.tiers)
    codes = Counter(u.code for u in document.usage if u.code not in catalog.metrics)
    return UnknownToCatalog(tiers, codes)


def _named(counts: Counter[str]) -> str:
    shown = ", ".join(f"{name!r} ({n})" for name, n in counts.most_common(SHOWN))
    more = len(counts) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
