"""Small catalogs for the tests of `plans push`: the free default and a `pro` tier sold at given prices."""

from __future__ import annotations

from tiergate.catalog import Catalog, parse_catalog

PRO_MONTH = "month: {lookup_key: pro_month, unit_amount: 4900, currency: usd}"
PRO_YEAR = "year: {lookup_key: pro_year, unit_amount: 49000, currency: usd}"


def pro_sold_at(*prices: str, extra: str = "") -> Catalog:
    """`free` (the default, no price) and `pro` (rank 10, named Pro) with one price per entry of
    `prices` (`<interval>: {lookup_key: ..., unit_amount: ..., currency: ...}`), and `extra`
    top-level YAML (metrics, add-ons)."""
    sold = "".join(f"\n      {price}" for price in prices)
    tiers = f"tiers:\n  free: {{rank: 0}}\n  pro:\n    rank: 10\n    name: Pro\n    prices:{sold}\n"
    return parse_catalog(f"default_tier: free\n{tiers}{extra}")
