"""plan_push (pure) and apply_push against a recording store: idempotent, moves keys, never deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.catalogs import PRO_MONTH, PRO_YEAR, pro_sold_at
from tiergate.catalog import Catalog, load_catalog
from tiergate.sync_daemon.billing.push import (
    CreateMeter,
    CreatePrice,
    CreateProduct,
    Remote,
    RemoteCatalog,
    RemotePrice,
    SetPriceActive,
    Unchangeable,
    UpdateProduct,
    apply_push,
    plan_meters,
    plan_push,
    sellables,
)

ROOT = Path(__file__).parents[2]


@pytest.fixture
def small() -> Catalog:
    return pro_sold_at(PRO_MONTH, PRO_YEAR)


def in_stripe(catalog: Catalog, legacy: bool = False) -> RemoteCatalog:
    """What Stripe holds after a successful push of `catalog`."""
    sold = sellables(catalog)
    products = [Remote(f"prod_{s.key}", s.key, s.name) for s in sold]
    prices = [
        RemotePrice(
            f"price_{p.lookup_key}",
            f"prod_{s.key}",
            p.lookup_key,
            p.unit_amount,
            p.currency,
            interval,
            currency_options=() if legacy else tuple(sorted(p.currency_options.items())),
        )
        for s in sold
        for interval, p in s.prices.items()
    ]
    return RemoteCatalog(tuple(products), tuple(prices), legacy_plans=legacy)


def test_an_empty_account_gets_one_product_per_sold_tier_and_a_price_per_interval() -> None:
    catalog = load_catalog(ROOT / "plans" / "plans.yaml")
    changes = plan_push(catalog, RemoteCatalog())
    products = [c for c in changes if isinstance(c, CreateProduct)]
    prices = [c for c in changes if isinstance(c, CreatePrice)]
    tiers = ["starter", "pro", "enterprise"]  # free has no prices
    assert [p.tier for p in products] == [*tiers, "addon:extra_storage", "addon:audit_pack"]
    assert {p.lookup_key for p in prices} == {f"{t}_{i}" for t in tiers for i in ("month", "year")} | {
        "extra_storage_month",
        "extra_storage_year",
        "audit_pack_month",
    }
    assert all(p.replaces is None for p in prices) and len(changes) == 14
    described = {c.describe() for c in changes}
    assert "create product for add-on 'audit_pack' (Audit log)" in described
    assert "create price 'audit_pack_month' for add-on 'audit_pack': 2900 usd/month" in described


def test_a_second_run_changes_nothing() -> None:
    catalog = load_catalog(ROOT / "plans" / "plans.yaml")
    assert plan_push(catalog, in_stripe(catalog)) == []
    assert plan_push(catalog, in_stripe(catalog, legacy=True)) == []


def test_a_new_amount_creates_a_price_that_takes_the_key_then_retires_the_old(small: Catalog) -> None:
    remote = in_stripe(small)
    cheaper = RemotePrice("price_pro_month", "prod_pro", "pro_month", 3900, "usd", "month")
    changes = plan_push(small, RemoteCatalog(remote.products, (cheaper, remote.prices[1])))
    assert changes == [
        CreatePrice("pro", "month", "pro_month", 4900, "usd", replaces="price_pro_month"),
        SetPriceActive("price_pro_month", "pro_month", False, "replaced by a new amount"),
    ]
    assert "moving the lookup key from price_pro_month" in changes[0].describe()


def test_prices_that_left_the_catalog_are_deactivated_never_deleted(small: Catalog) -> None:
    remote = in_stripe(small)
    old = RemotePrice("price_pro_week", "prod_pro", "pro_week", 1500, "usd", "week")
    keyless = RemotePrice("price_adhoc", "prod_pro", None, 100, "usd", "month")
    gone = RemotePrice("price_done", "prod_pro", "pro_old", 1, "usd", "month", active=False)
    changes = plan_push(small, RemoteCatalog(remote.products, (*remote.prices, old, keyless, gone)))
    assert changes == [
        SetPriceActive("price_pro_week", "pro_week", False, "no longer in the catalog"),
        SetPriceActive("price_adhoc", None, False, "no longer in the catalog"),
    ]


def test_renamed_or_archived_products_are_updated_and_inactive_prices_come_back(small: Catalog) -> None:
    remote = in_stripe(small)
    archived = Remote("prod_pro", "pro", "Old name", active=False)
    inactive = RemotePrice("price_pro_year", "prod_pro", "pro_year", 49000, "usd", "year", active=False)
    changes = plan_push(small, RemoteCatalog((archived,), (remote.prices[0], inactive)))
    assert changes == [
        UpdateProduct("prod_pro", "pro", "Pro"),
        SetPriceActive("price_pro_year", "pro_year", True, "back in the catalog"),
    ]


def test_legacy_plans_cannot_change_their_amount(small: Catalog) -> None:
    remote = in_stripe(small, legacy=True)
    cheaper = RemotePrice("pro_month", "prod_pro", "pro_month", 3900, "usd", "month")
    changes = plan_push(small, RemoteCatalog(remote.products, (cheaper, remote.prices[1]), legacy_plans=True))
    assert len(changes) == 1 and isinstance(changes[0], Unchangeable)


def test_idempotency_keys_differ_per_change_and_repeat_per_retry() -> None:
    a = CreatePrice("pro", "month", "pro_month", 4900, "usd")
    assert a.idempotency_key() == CreatePrice("pro", "month", "pro_month", 4900, "usd").idempotency_key()
    assert a.idempotency_key() != CreatePrice("pro", "month", "pro_month", 3900, "usd").idempotency_key()


class RecordingStore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def read(self) -> RemoteCatalog:
        return RemoteCatalog()

    async def create_product(self, change: CreateProduct) -> str:
        self.calls.append(("product", change.tier))
        return f"prod_new_{change.tier}"

    async def update_product(self, change: UpdateProduct) -> None:
        self.calls.append(("update", change.product_id))

    async def create_price(self, change: CreatePrice, product_id: str) -> str:
        self.calls.append(("price", f"{change.lookup_key}@{product_id}"))
        return "price_new"

    async def set_price_active(self, change: SetPriceActive) -> None:
        self.calls.append(("active" if change.active else "inactive", change.price_id))

    async def create_meter(self, change: CreateMeter) -> None:
        self.calls.append(("meter", change.event_name))


async def test_apply_creates_products_before_their_prices_and_new_prices_before_retiring(
    small: Catalog,
) -> None:
    store = RecordingStore()
    stale = RemotePrice("price_old", "prod_x", "gone", 1, "usd", "month")
    remote = RemoteCatalog((), (stale,))
    changes = [*plan_push(small, remote), Unchangeable("k", "why")]
    result = await apply_push(store, remote, changes)
    assert store.calls == [
        ("product", "pro"),
        ("price", "pro_month@prod_new_pro"),
        ("price", "pro_year@prod_new_pro"),
        ("inactive", "price_old"),
    ]
    assert len(result.done) == 4 and result.skipped == ["skip 'k': why"]


METERED = """
metrics:
  api_calls: {aggregation: count, meter: tiergate_api_calls}
  storage_gb: {aggregation: sum, field: gb, meter: tiergate_storage_gb}
"""


def metered(catalog: Catalog) -> Catalog:
    return pro_sold_at(PRO_MONTH, PRO_YEAR, extra=METERED)


@pytest.mark.parametrize(
    ("meters", "expected"),
    [
        (
            frozenset(),
            [
                CreateMeter("api_calls", "tiergate_api_calls"),
                CreateMeter("storage_gb", "tiergate_storage_gb"),
            ],
        ),
        (frozenset({"tiergate_api_calls"}), [CreateMeter("storage_gb", "tiergate_storage_gb")]),
        (frozenset({"tiergate_api_calls", "tiergate_storage_gb"}), []),
    ],
)
def test_push_creates_the_meters_stripe_lacks(
    small: Catalog, meters: frozenset[str], expected: list[CreateMeter]
) -> None:
    assert [
        c for c in plan_push(metered(small), RemoteCatalog(meters=meters)) if isinstance(c, CreateMeter)
    ] == expected


def test_an_emulator_without_meters_is_told_not_failed(small: Catalog) -> None:
    skipped = [
        c for c in plan_push(metered(small), RemoteCatalog(meters=None)) if isinstance(c, Unchangeable)
    ]
    assert [c.lookup_key for c in skipped] == ["tiergate_api_calls", "tiergate_storage_gb"]


async def test_apply_creates_meters(small: Catalog) -> None:
    store = RecordingStore()
    changes = plan_meters(metered(small), RemoteCatalog())
    result = await apply_push(store, RemoteCatalog(), changes)
    assert store.calls == [("meter", "tiergate_api_calls"), ("meter", "tiergate_storage_gb")]
    assert len(result.done) == 2
