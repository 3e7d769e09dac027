"""The catalog schema: the sample is valid, and every kind of mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.catalog import Quota, load_catalog, parse_catalog
from tiergate.errors import CatalogError

ROOT = Path(__file__).parents[2]

MINIMAL = """
default_tier: free
metrics: {api_calls: {aggregation: count}}
tiers:
  free: {rank: 0, features: {api_calls: {limit: 10}, sso: false}}
  pro:
    rank: 10
    prices: {month: {lookup_key: pro_month, unit_amount: 4900, currency: usd}}
    features: {api_calls: {}, sso: true}
"""


def test_sample_catalog_is_valid() -> None:
    catalog = load_catalog(ROOT / "plans" / "plans.yaml")
    assert catalog.default_tier == "free"
    assert {"free", "starter", "pro", "enterprise"} <= set(catalog.tiers)
    assert catalog.tier_for_lookup_key("pro_year") == ("pro", "year")


def test_feature_values_keep_their_meaning_in_policy_data() -> None:
    data = parse_catalog(MINIMAL).policy_data()
    assert data["tiers"]["free"]["features"] == {"api_calls": {"limit": 10}, "sso": False}
    assert data["tiers"]["pro"]["features"]["api_calls"] == {}  # {} means unlimited
    assert parse_catalog(MINIMAL).tiers["pro"].features["api_calls"] == Quota()


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        (("default_tier: free", "default_tier: gold"), "default_tier", "not one of the tiers"),
        (("rank: 10", "rank: 0"), "tiers.pro.rank", "also the rank"),
        (
            ("{limit: 10}", "{limit: -1}"),
            "tiers.free.features.api_calls.limit",
            "greater than or equal",
        ),
        (("sso: false", "sso: maybe"), "tiers.free.features.sso", "true, false, {limit: N} or {}"),
        (("{aggregation: count}", "{aggregation: sum}"), "metrics.api_calls", "needs 'field'"),
        (("{aggregation: count}", "{aggregation: latest}"), "metrics.api_calls", "needs 'field'"),
        (("{aggregation: count}", "{aggregation: max}"), "metrics.api_calls.aggregation", "'latest'"),
        (("currency: usd", "currency: USD"), "tiers.pro.prices.month.currency", "pattern"),
        (("month:", "fortnight:"), "tiers.pro.prices.fortnight", "Input should be"),
        (("rank: 0,", "rank: 0, colour: red,"), "tiers.free.colour", "Extra inputs"),
        (
            (
                "{api_calls: {aggregation: count}}",
                "{api_calls: {aggregation: count, meter: m}, b: {aggregation: count, meter: m}}",
            ),
            "metrics.b.meter",
            "also the meter of 'api_calls'",
        ),
        (
            ("{aggregation: count}", "{aggregation: count, meter: 'a b'}"),
            "metrics.api_calls.meter",
            "pattern",
        ),
    ],
)
def test_each_problem_names_its_field(edit: tuple[str, str], field: str, fragment: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(MINIMAL.replace(*edit, 1))
    assert any(path == field and fragment in msg for path, msg in caught.value.problems), (
        caught.value.problems
    )


def test_routes_must_name_known_features_and_metrics() -> None:
    text = MINIMAL + 'routes:\n  - {path: "/a/*", feature: nope}\n  - {path: "/b", usage: storage}\n'
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    fields = [path for path, _ in caught.value.problems]
    assert fields == ["routes[0].feature", "routes[1].usage"]


def test_a_gauge_cannot_be_a_routes_usage() -> None:
    text = MINIMAL.replace("{aggregation: count}", "{aggregation: latest, field: n}")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text + 'routes:\n  - {path: "/a", usage: api_calls}\n')
    assert [(path, "gauge" in msg) for path, msg in caught.value.problems] == [("routes[0].usage", True)]
    assert parse_catalog(text).metrics["api_calls"].aggregation == "latest"


def test_not_yaml_and_not_a_mapping_are_errors() -> None:
    with pytest.raises(CatalogError, match="not valid YAML"):
        parse_catalog("tiers: [unclosed")
    with pytest.raises(CatalogError, match="mapping"):
        parse_catalog("- a\n- b\n")


def test_duplicate_lookup_keys_are_rejected() -> None:
    text = MINIMAL.replace(
        "rank: 0,",
        "rank: 0, prices: {month: {lookup_key: pro_month, unit_amount: 0, currency: usd}},",
    )
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    assert any("pro_month" in msg for _, msg in caught.value.problems)


def test_addons_are_checked_with_the_rest() -> None:
    text = """
default_tier: free
tiers:
  free: {rank: 0, features: {storage_gb: {limit: 1}}}
  pro: {rank: 1, prices: {month: {lookup_key: pro_month, unit_amount: 1, currency: usd}}, features: {seats: {limit: 5, limit_by: quantity}}}
addons:
  extra:
    prices: {month: {lookup_key: pro_month, unit_amount: 1, currency: usd}}
    features: {storage_gb: {add_limit: 0}, teleport: true, seats: false}
"""
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    problems = dict(caught.value.problems)
    assert (
        problems["addons.extra.prices.month.lookup_key"]
        == "'pro_month' is also used by tiers.pro.prices.month.lookup_key"
    )
    assert problems["addons.extra.features.teleport"] == "'teleport' is in no tier's features"
    assert "greater than or equal to 1" in problems["addons.extra.features.storage_gb.add_limit"]
    assert "true (turns it on) or {add_limit: N}" in problems["addons.extra.features.seats"]
    sample = load_catalog(Path(__file__).parents[2] / "plans" / "plans.yaml")
    assert sample.addon_for_lookup_key("extra_storage_year") == "extra_storage"
    assert sample.addon_for_lookup_key("pro_month") is None
    assert sample.tiers["pro"].features["seats"] == Quota(limit=25, limit_by="quantity")
