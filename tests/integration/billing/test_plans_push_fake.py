"""`plans push` against the recording fake (real Prices API): lookup keys, transfer, deactivation; the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.catalogs import PRO_MONTH, pro_sold_at
from tests.fake_stripe import RecordingStripeHTTP, fixture
from tiergate.catalog import parse_catalog
from tiergate.cli import main
from tiergate.sync_daemon.billing.stripe_catalog import StripeCatalogStore, push_catalog

CATALOG = pro_sold_at(PRO_MONTH)


def price(price_id: str, lookup_key: str | None, amount: int, product: str = "prod_pro") -> dict[str, Any]:
    body = fixture(
        "price", id=price_id, lookup_key=lookup_key, unit_amount=amount, currency="usd", product=product
    )
    body["recurring"]["interval"] = "month"
    return body


def store(fake: RecordingStripeHTTP) -> StripeCatalogStore:
    return StripeCatalogStore("sk_test_push", api_base="https://api.stripe.com", http=fake, retries=0)


async def test_first_push_creates_a_product_with_its_tier_and_a_price_with_its_lookup_key() -> None:
    fake = RecordingStripeHTTP(lists={"prices": [], "products": []})
    fake.answer("POST", "/v1/products", {"id": "prod_new"})
    changes, result = await push_catalog(CATALOG, store(fake), dry_run=False)
    assert len(changes) == len(result.done) == 2
    product = fake.only("POST", "/v1/products")
    assert product.params == {"name": "Pro", "metadata[tier]": "pro"}
    assert product.idempotency_key == "tiergate-product-pro"
    created = fake.only("POST", "/v1/prices")
    assert created.params == {
        "product": "prod_new",
        "currency": "usd",
        "metadata[tier]": "pro",
        "unit_amount": "4900",
        "recurring[interval]": "month",
        "lookup_key": "pro_month",
    }
    assert created.idempotency_key and created.idempotency_key.startswith("tiergate-price-")


async def test_a_new_amount_moves_the_key_and_deactivates_old_and_stray_prices() -> None:
    products = [fixture("product", id="prod_pro", name="Pro", active=True, metadata={"tier": "pro"})]
    held = [price("price_old", "pro_month", 3900), price("price_stray", "pro_week", 100)]
    foreign = price("price_other_app", None, 5, product="prod_not_ours")
    fake = RecordingStripeHTTP(lists={"prices": [*held, foreign], "products": products})
    _, result = await push_catalog(CATALOG, store(fake), dry_run=False)
    assert len(result.done) == 3
    created = fake.only("POST", "/v1/prices")
    assert created.params["transfer_lookup_key"] == "true" and created.params["unit_amount"] == "4900"
    assert fake.only("POST", "/v1/prices/price_old").params == {"active": "false"}
    assert fake.only("POST", "/v1/prices/price_stray").params == {"active": "false"}
    assert fake.sent("POST", "/v1/prices/price_other_app") == []  # not ours: untouched
    assert [c.method for c in fake.calls if c.method == "DELETE"] == []  # never deleted


async def test_dry_run_reads_only() -> None:
    fake = RecordingStripeHTTP(lists={"prices": [], "products": []})
    changes, result = await push_catalog(CATALOG, store(fake), dry_run=True)
    assert len(changes) == 2 and result.done == []
    assert {c.method for c in fake.calls} == {"GET"}


@pytest.mark.parametrize("dry_run", [True, False])
def test_cli_prints_the_plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dry_run: bool) -> None:
    from tiergate.sync_daemon.billing import stripe_catalog

    def fake_run(settings: Any, catalog: Any, *, dry_run: bool) -> Any:
        from tiergate.sync_daemon.billing.push import PushResult, RemoteCatalog, plan_push

        changes = plan_push(catalog, RemoteCatalog(legacy_plans=True))
        done = PushResult() if dry_run else PushResult(done=[c.describe() for c in changes])
        return changes, done, True

    monkeypatch.setattr(stripe_catalog, "run_push", fake_run)
    for name, value in {
        "STRIPE_API_KEY": "sk_test_x",
        "STRIPE_WEBHOOK_SECRET": "whsec_test_0123456789",
        "FEED_TOKEN": "feed-token-for-tests-0001",
    }.items():
        monkeypatch.setenv(f"TIERGATE_{name}", value)
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "default_tier: free\ntiers:\n  free: {rank: 0}\n  pro: {rank: 1, prices: {month: {lookup_key: pm, unit_amount: 1, currency: usd}}}\n"
    )
    args = ["plans", "push", str(plans), *(["--dry-run"] if dry_run else [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "using Plans whose id is the lookup key" in result.output
    assert ("would create price 'pm'" in result.output) is dry_run
    assert ("2 changes made" in result.output) is not dry_run


CURRENCIES = pro_sold_at(
    "month: {lookup_key: pro_month, unit_amount: 4900, currency: usd, currency_options: {eur: 4500, gbp: 3900}}"
)


def priced_in(price_id: str, options: dict[str, int]) -> dict[str, Any]:
    """A price as Stripe lists it with `expand[]=data.currency_options`: its own currency included."""
    body = price(price_id, "pro_month", 4900)
    body["currency_options"] = {
        c: {"unit_amount": a, "tax_behavior": "unspecified"} for c, a in options.items()
    }
    return body


async def test_currency_options_are_created_read_back_expanded_and_compared() -> None:
    products = [fixture("product", id="prod_pro", name="Pro", active=True, metadata={"tier": "pro"})]
    fake = RecordingStripeHTTP(lists={"prices": [], "products": products})
    await push_catalog(CURRENCIES, store(fake), dry_run=False)
    created = fake.only("POST", "/v1/prices")
    assert created.params["currency_options[eur][unit_amount]"] == "4500"
    assert created.params["currency_options[gbp][unit_amount]"] == "3900"
    listed = fake.sent("GET", "/v1/prices")[-1]
    assert listed.params["expand[0]"] == "data.currency_options"

    same = priced_in("price_1", {"usd": 4900, "eur": 4500, "gbp": 3900})
    fake = RecordingStripeHTTP(lists={"prices": [same], "products": products})
    changes, _ = await push_catalog(CURRENCIES, store(fake), dry_run=False)
    assert changes == []

    fewer = priced_in("price_1", {"usd": 4900, "eur": 4500})
    fake = RecordingStripeHTTP(lists={"prices": [fewer], "products": products})
    changes, _ = await push_catalog(CURRENCIES, store(fake), dry_run=False)
    assert [c.describe() for c in changes] == [
        "create price 'pro_month' for tier 'pro': 4900 usd/month, 4500 eur, 3900 gbp, moving the lookup key from price_1",
        "deactivate price price_1 (pro_month): replaced by a new amount",
    ]
    assert fake.only("POST", "/v1/prices").params["transfer_lookup_key"] == "true"


METERED = parse_catalog(
    """
default_tier: free
metrics:
  api_calls: {aggregation: count, meter: api_requests}
  storage_gb: {aggregation: sum, field: gb, meter: storage}
  seats: {aggregation: latest, field: seats, meter: seats_in_use}
tiers:
  free: {rank: 0}
"""
)


async def test_push_creates_the_missing_meters_and_leaves_existing_ones() -> None:
    existing = fixture("billing.meter", id="mtr_1", event_name="api_requests")
    fake = RecordingStripeHTTP(lists={"prices": [], "products": [], "billing/meters": [existing]})
    changes, result = await push_catalog(METERED, store(fake), dry_run=False)
    assert [c.describe() for c in changes] == result.done
    created, gauge = fake.sent("POST", "/v1/billing/meters")
    assert gauge.params["event_name"] == "seats_in_use"
    assert gauge.params["default_aggregation[formula]"] == "last"  # a gauge: the last value, not a sum
    assert created.params == {
        "display_name": "storage_gb",
        "event_name": "storage",
        "default_aggregation[formula]": "sum",
        "customer_mapping[type]": "by_id",
        "customer_mapping[event_payload_key]": "stripe_customer_id",
        "value_settings[event_payload_key]": "value",
    }
    assert created.idempotency_key == "tiergate-meter-storage"


async def test_an_emulator_without_meters_is_reported_not_failed() -> None:
    fake = RecordingStripeHTTP(lists={"prices": [], "products": []})  # /v1/billing/meters: 404
    _, result = await push_catalog(METERED, store(fake), dry_run=False)
    assert len(result.skipped) == 3 and all("no Billing Meters API" in s for s in result.skipped)
    assert not fake.sent("POST", "/v1/billing/meters")
