"""`plans push` creates Stripe Entitlements Features and attaches them to the tier and add-on products."""

from __future__ import annotations

from typing import Any

from tests.fake_stripe import Call, RecordingStripeHTTP, fixture
from tiergate.catalog import parse_catalog
from tiergate.sync_daemon.billing.push import Remote
from tiergate.sync_daemon.billing.push_features import (
    AttachFeature,
    Attachment,
    CreateFeature,
    DetachFeature,
    RemoteFeatures,
    plan_features,
)
from tiergate.sync_daemon.billing.stripe_catalog import StripeCatalogStore, push_catalog

CATALOG = parse_catalog(
    """
default_tier: free
tiers:
  free: {rank: 0, features: {api_calls: {limit: 10}, sso: false}}
  pro:
    rank: 10
    name: Pro
    prices: {month: {lookup_key: pro_month, unit_amount: 4900, currency: usd}}
    features: {api_calls: {limit: 1000}, sso: true, reports: false}
addons:
  more_calls:
    prices: {month: {lookup_key: more_calls_month, unit_amount: 500, currency: usd}}
    features: {api_calls: {add_limit: 1000}}
"""
)


def test_the_plan_creates_missing_features_attaches_granted_ones_and_detaches_the_rest() -> None:
    products = {"pro": "prod_pro", "addon:more_calls": "prod_more"}
    assert plan_features(CATALOG, RemoteFeatures(), products) == [
        CreateFeature("api_calls", "Api calls"),
        CreateFeature("reports", "Reports"),
        CreateFeature("sso", "Sso"),
        AttachFeature("pro", "api_calls"),
        AttachFeature("pro", "sso"),
        AttachFeature("addon:more_calls", "api_calls"),
    ]
    remote = RemoteFeatures(
        tuple(Remote(f"feat_{k}", k, k) for k in ("api_calls", "reports", "sso")),
        (
            Attachment("pf_1", "prod_pro", "api_calls"),
            Attachment("pf_2", "prod_pro", "sso"),
            Attachment("pf_3", "prod_pro", "reports"),  # reports is false on pro now
            Attachment("pf_4", "prod_more", "api_calls"),
        ),
    )
    assert plan_features(CATALOG, remote, products) == [DetachFeature("prod_pro", "pf_3", "reports")]


def product_id(call: Call) -> dict[str, Any]:
    key = call.params.get("metadata[tier]") or call.params.get("metadata[addon]")
    return {"id": f"prod_{key}"}


async def test_push_sends_features_and_attachments_to_stripe() -> None:
    fake = RecordingStripeHTTP(lists={"prices": [], "products": [], "entitlements/features": []})
    fake.answer("POST", "/v1/products", product_id)
    fake.answer("POST", "/v1/entitlements/features", lambda call: {"id": f"feat_{call.params['lookup_key']}"})
    store = StripeCatalogStore("sk_test_push", api_base="https://api.stripe.com", http=fake, retries=0)
    changes, result = await push_catalog(CATALOG, store, dry_run=False)
    assert "attach feature 'sso' to the product of tier 'pro'" in result.done
    created = fake.sent("POST", "/v1/entitlements/features")
    assert [c.params for c in created] == [
        {"lookup_key": k, "name": n, "metadata[tiergate]": "catalog"}
        for k, n in (("api_calls", "Api calls"), ("reports", "Reports"), ("sso", "Sso"))
    ]
    assert created[0].idempotency_key == "tiergate-feature-api_calls"
    attached = [(c.path, c.params) for c in fake.sent("POST", r"/v1/products/[^/]+/features")]
    assert attached == [
        ("/v1/products/prod_pro/features", {"entitlement_feature": "feat_api_calls"}),
        ("/v1/products/prod_pro/features", {"entitlement_feature": "feat_sso"}),
        ("/v1/products/prod_more_calls/features", {"entitlement_feature": "feat_api_calls"}),
    ]

    # Stripe now holds them, plus one attachment the catalog no longer grants: it is detached.
    feature = fixture("entitlements.feature")
    held = [
        {
            **fixture("product_feature", id=f"pf_{k}"),
            "entitlement_feature": {**feature, "id": f"feat_{k}", "lookup_key": k},
        }
        for k in ("api_calls", "sso", "reports")
    ]
    fake = RecordingStripeHTTP(
        lists={
            "prices": [],
            "products": [
                fixture("product", id="prod_pro", name="Pro", active=True, metadata={"tier": "pro"})
            ],
            "entitlements/features": [
                {**feature, "id": f"feat_{k}", "lookup_key": k} for k in ("api_calls", "reports", "sso")
            ],
            "products/prod_pro/features": held,
        }
    )
    fake.answer("POST", "/v1/products", product_id)
    store = StripeCatalogStore("sk_test_push", api_base="https://api.stripe.com", http=fake, retries=0)
    changes, _ = await push_catalog(CATALOG, store, dry_run=False)
    assert fake.sent("POST", "/v1/entitlements/features") == []
    assert [c.path for c in fake.sent("DELETE", r".*")] == ["/v1/products/prod_pro/features/pf_reports"]
    assert "detach feature 'reports' from product prod_pro: no longer granted" in [
        c.describe() for c in changes
    ]
