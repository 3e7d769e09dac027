"""`plans push` and credit packs: a one-time price per pack (Prices API), reported as skipped on Plans."""

from __future__ import annotations

from tests.fake_stripe import RecordingStripeHTTP, fixture
from tiergate.catalog import parse_catalog
from tiergate.sync_daemon.billing.push import (
    CreatePrice,
    CreateProduct,
    RemoteCatalog,
    Unchangeable,
    plan_push,
)
from tiergate.sync_daemon.billing.stripe_catalog import StripeCatalogStore, push_catalog

CATALOG = parse_catalog(
    """
default_tier: free
metrics: {gpt4_tokens: {aggregation: sum, field: tokens}}
credits: {ai_credits: {name: AI credits, decimals: 2}}
tiers:
  free: {rank: 0, features: {gpt4_tokens: {credits: {ai_credits: "0.03"}}}}
packs:
  ai_5000:
    name: 5,000 AI credits
    credits: ai_credits
    amount: 5000
    price: {lookup_key: ai_5000, unit_amount: 2000, currency: usd}
"""
)


def store(fake: RecordingStripeHTTP) -> StripeCatalogStore:
    return StripeCatalogStore("sk_test_push", api_base="https://api.stripe.com", http=fake, retries=0)


async def test_a_pack_gets_a_product_and_a_one_time_price() -> None:
    fake = RecordingStripeHTTP(lists={"prices": [], "products": []})
    fake.answer("POST", "/v1/products", {"id": "prod_pack"})
    changes, result = await push_catalog(CATALOG, store(fake), dry_run=False)
    # (the Entitlements Feature of gpt4_tokens besides: the catalog's features, not the pack's)
    assert [c.describe() for c in changes if "pack" in c.describe()] == [
        "create product for pack 'ai_5000' (5,000 AI credits)",
        "create price 'ai_5000' for pack 'ai_5000': 2000 usd/once",
    ]
    assert len(result.done) == len(changes)
    assert fake.only("POST", "/v1/products").params == {
        "name": "5,000 AI credits",
        "metadata[credit_pack]": "ai_5000",
    }
    created = fake.only("POST", "/v1/prices")
    assert created.params == {
        "product": "prod_pack",
        "currency": "usd",
        "metadata[credit_pack]": "ai_5000",
        "unit_amount": "2000",
        "lookup_key": "ai_5000",
    }  # no recurring[interval]: a one-time price


async def test_a_second_push_finds_the_one_time_price_and_changes_nothing() -> None:
    product = fixture("product", id="prod_pack", name="5,000 AI credits", active=True)
    product["metadata"] = {"credit_pack": "ai_5000"}
    price = fixture(
        "price", id="price_pack", lookup_key="ai_5000", unit_amount=2000, currency="usd", product="prod_pack"
    )
    price["recurring"] = None
    price["type"] = "one_time"
    fake = RecordingStripeHTTP(lists={"prices": [price], "products": [product]})
    changes, _ = await push_catalog(CATALOG, store(fake), dry_run=True)
    assert [c.describe() for c in changes if "pack" in c.describe() or "price" in c.describe()] == []


def test_an_emulator_with_plans_only_skips_the_pack_price_and_says_why() -> None:
    changes = plan_push(CATALOG, RemoteCatalog(legacy_plans=True))
    assert [type(c) for c in changes] == [CreateProduct, Unchangeable]
    assert (
        changes[1].describe() == "skip 'ai_5000': this Stripe (an emulator) has no one-time prices for packs"
    )
    assert not any(isinstance(c, CreatePrice) for c in changes)
