"""StripeCatalogStore: the CatalogStore adapter for `tiergate plans push` (Prices, or legacy Plans)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import stripe

from tiergate.catalog import Catalog
from tiergate.sync_daemon.billing.push import (
    ADDON_PREFIX,
    ONCE,
    PACK_PREFIX,
    Change,
    CreateMeter,
    CreatePrice,
    CreateProduct,
    PushResult,
    Remote,
    RemoteCatalog,
    RemotePrice,
    SetPriceActive,
    UpdateProduct,
    apply_push,
    plan_push,
)
from tiergate.sync_daemon.billing.push_features import (
    Attachment,
    CreateFeature,
    DetachFeature,
    FeatureChange,
    RemoteFeatures,
    apply_feature_push,
    plan_features,
)
from tiergate.sync_daemon.billing.stripe_actions import has_prices, make_client, stripe_failure
from tiergate.sync_daemon.settings import DaemonSettings

TIER_KEY = "tier"  # product metadata naming the catalog tier: how a product is recognised as ours
ADDON_KEY = "addon"  # ... or naming the catalog add-on
PACK_KEY = "credit_pack"  # ... or naming the catalog's credit pack


class StripeCatalogStore:
    def __init__(self, api_key: str, *, api_base: str, http: stripe.HTTPClient, retries: int = 2) -> None:
        self._base = api_base
        self._client = make_client(api_key, api_base, http, retries)
        self._legacy = False

    @property
    def legacy(self) -> bool:
        """True after `read` found no Prices API (an emulator): Plans stand in for prices."""
        return self._legacy

    def __repr__(self) -> str:  # never the key
        return f"StripeCatalogStore(api_base={self._base!r})"

    async def read(self) -> RemoteCatalog:
        self._legacy = not await has_prices(self._client, self._base)
        try:
            products = [p.to_dict() async for p in await self._list(self._client.v1.products, {"limit": 100})]
            ours = {p["id"]: _product(p) for p in products if _key(p) is not None}
            if self._legacy:
                listing = await self._list(self._client.v1.plans, {"limit": 100})
            else:  # currency_options come only when expanded
                listing = await self._list(
                    self._client.v1.prices, {"limit": 100, "expand": ["data.currency_options"]}
                )
            listed = [p.to_dict() async for p in listing]
        except stripe.StripeError as exc:
            raise stripe_failure("list the catalog's products and prices", exc, self._base) from exc
        read = _plan if self._legacy else _price
        prices = [read(p) for p in listed if _product_id(p) in ours]
        meters = await self._meters()
        return RemoteCatalog(tuple(ours.values()), tuple(prices), legacy_plans=self._legacy, meters=meters)

    async def _meters(self) -> frozenset[str] | None:
        """Every meter's event_name (inactive ones too: Stripe keeps their names taken); None
        when this Stripe has no meters API (an emulator answers 404)."""
        try:
            listing = await self._list(self._client.v1.billing.meters, {"limit": 100})
            return frozenset([m.to_dict()["event_name"] async for m in listing])
        except stripe.StripeError as exc:
            if exc.http_status == 404:
                return None
            raise stripe_failure("list the billing meters", exc, self._base) from exc

    async def create_meter(self, change: CreateMeter) -> None:
        params: dict[str, Any] = {
            "display_name": change.code,
            "event_name": change.event_name,
            "default_aggregation": {"formula": change.formula},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
        options: stripe.RequestOptions = {"idempotency_key": change.idempotency_key()}
        try:
            await self._client.v1.billing.meters.create_async(params, options)  # type: ignore[arg-type]  # plain dict params
        except stripe.StripeError as exc:
            raise stripe_failure(f"create the meter {change.event_name!r}", exc, self._base) from exc

    async def create_product(self, change: CreateProduct) -> str:
        params: dict[str, Any] = {"name": change.name, "metadata": _metadata(change.tier)}
        options: stripe.RequestOptions = {
            "idempotency_key": f"tiergate-product-{change.tier}".replace(":", "-")
        }
        try:
            product = await self._client.v1.products.create_async(params, options)  # type: ignore[arg-type]  # plain dict params
        except stripe.StripeError as exc:
            raise stripe_failure(f"create the product for tier {change.tier!r}", exc, self._base) from exc
        return product.id

    async def update_product(self, change: UpdateProduct) -> None:
        try:
            await self._client.v1.products.update_async(
                change.product_id, {"name": change.name, "active": True}
            )
        except stripe.StripeError as exc:
            raise stripe_failure(f"update product {change.product_id}", exc, self._base) from exc

    async def create_price(self, change: CreatePrice, product_id: str) -> str:
        options: stripe.RequestOptions = {"idempotency_key": change.idempotency_key()}
        common: dict[str, Any] = {
            "product": product_id,
            "currency": change.currency,
            "metadata": _metadata(change.tier),
        }
        try:
            if self._legacy:  # a Plan whose id is the lookup key: what the daemon maps back to the tier
                plan = {
                    **common,
                    "id": change.lookup_key,
                    "amount": change.unit_amount,
                    "interval": change.interval,
                }
                created = await self._client.v1.plans.create_async(plan, options)  # type: ignore[arg-type]  # plain dict params
                return str(created.id)
            price: dict[str, Any] = {
                **common,
                "unit_amount": change.unit_amount,
                "lookup_key": change.lookup_key,
            }
            if change.interval != ONCE:
                price["recurring"] = {"interval": change.interval}
            if change.currency_options:
                price["currency_options"] = {
                    currency: {"unit_amount": amount} for currency, amount in change.currency_options
                }
            if change.replaces:
                price["transfer_lookup_key"] = True  # atomically take the key from the old price
            made = await self._client.v1.prices.create_async(price, options)  # type: ignore[arg-type]  # plain dict params
            return str(made.id)
        except stripe.StripeError as exc:
            raise stripe_failure(f"create the price {change.lookup_key!r}", exc, self._base) from exc

    async def set_price_active(self, change: SetPriceActive) -> None:
        try:
            if self._legacy:
                await self._client.v1.plans.update_async(change.price_id, {"active": change.active})
            else:
                await self._client.v1.prices.update_async(change.price_id, {"active": change.active})
        except stripe.StripeError as exc:
            raise stripe_failure(f"update price {change.price_id}", exc, self._base) from exc

    # -- Entitlements Features (FeatureStore) -----------------------------------------------

    async def read_features(self, product_ids: Sequence[str]) -> RemoteFeatures:
        if self._legacy:  # an emulator without Prices has no Entitlements API either
            return RemoteFeatures()
        try:
            listing = await self._list(self._client.v1.entitlements.features, {"limit": 100})
            features = [_feature(f.to_dict()) async for f in listing]
            attachments: list[Attachment] = []
            for product_id in product_ids:
                page = await self._client.v1.products.features.list_async(product_id, {"limit": 100})
                async for held in page.auto_paging_iter():
                    body = held.to_dict()
                    lookup = (body.get("entitlement_feature") or {}).get("lookup_key")
                    if lookup:
                        attachments.append(Attachment(body["id"], product_id, lookup))
        except stripe.StripeError as exc:
            raise stripe_failure("list the entitlement features", exc, self._base) from exc
        return RemoteFeatures(tuple(features), tuple(attachments))

    async def create_feature(self, change: CreateFeature) -> str:
        params = {"lookup_key": change.lookup_key, "name": change.name, "metadata": {"tiergate": "catalog"}}
        options: stripe.RequestOptions = {"idempotency_key": f"tiergate-feature-{change.lookup_key}"}
        try:
            made = await self._client.v1.entitlements.features.create_async(params, options)  # type: ignore[arg-type]  # plain dict params
        except stripe.StripeError as exc:
            raise stripe_failure(f"create the feature {change.lookup_key!r}", exc, self._base) from exc
        return str(made.id)

    async def attach_feature(self, product_id: str, feature_id: str) -> None:
        options: stripe.RequestOptions = {"idempotency_key": f"tiergate-attach-{product_id}-{feature_id}"}
        try:
            await self._client.v1.products.features.create_async(
                product_id, {"entitlement_feature": feature_id}, options
            )
        except stripe.StripeError as exc:
            raise stripe_failure(f"attach {feature_id} to {product_id}", exc, self._base) from exc

    async def detach_feature(self, change: DetachFeature) -> None:
        try:
            await self._client.v1.products.features.delete_async(change.product_id, change.attachment_id)
        except stripe.StripeError as exc:
            raise stripe_failure(
                f"detach {change.lookup_key!r} from {change.product_id}", exc, self._base
            ) from exc

    async def _list(self, service: Any, params: dict[str, Any]) -> Any:
        page = await service.list_async(params)
        return page.auto_paging_iter()


def _product_id(obj: dict[str, Any]) -> str:
    product = obj.get("product")
    return str(product["id"] if isinstance(product, dict) else product)


def _key(p: dict[str, Any]) -> str | None:
    """The product's catalog key: its tier, or `addon:<name>`; None for a product that is not ours."""
    metadata = p.get("metadata") or {}
    if metadata.get(TIER_KEY):
        return str(metadata[TIER_KEY])
    if metadata.get(PACK_KEY):
        return PACK_PREFIX + str(metadata[PACK_KEY])
    return ADDON_PREFIX + str(metadata[ADDON_KEY]) if metadata.get(ADDON_KEY) else None


def _metadata(key: str) -> dict[str, str]:
    if key.startswith(ADDON_PREFIX):
        return {ADDON_KEY: key.removeprefix(ADDON_PREFIX)}
    if key.startswith(PACK_PREFIX):
        return {PACK_KEY: key.removeprefix(PACK_PREFIX)}
    return {TIER_KEY: key}


def _remote(obj: dict[str, Any], key: str | None) -> Remote:
    return Remote(obj["id"], key or "", str(obj.get("name") or ""), bool(obj.get("active", True)))


def _product(p: dict[str, Any]) -> Remote:
    return _remote(p, _key(p))


def _price(p: dict[str, Any]) -> RemotePrice:
    interval = (p.get("recurring") or {}).get("interval")
    # Stripe lists the price's own currency among its currency_options too: only the others count.
    options = tuple(
        sorted(
            (currency, int(option.get("unit_amount") or 0))
            for currency, option in (p.get("currency_options") or {}).items()
            if currency != p["currency"]
        )
    )
    return RemotePrice(
        p["id"],
        _product_id(p),
        p.get("lookup_key"),
        p.get("unit_amount"),
        p["currency"],
        interval,
        bool(p["active"]),
        options,
    )


def _feature(f: dict[str, Any]) -> Remote:
    return _remote(f, f.get("lookup_key"))


def _plan(p: dict[str, Any]) -> RemotePrice:
    return RemotePrice(
        p["id"], _product_id(p), p["id"], p.get("amount"), p["currency"], p.get("interval"), bool(p["active"])
    )


async def push_catalog(
    catalog: Catalog, store: StripeCatalogStore, *, dry_run: bool
) -> tuple[list[Change | FeatureChange], PushResult]:
    """Read Stripe, plan, and (unless `dry_run`) apply: what `tiergate plans push` runs.

    Products and prices first, then the Entitlements Features attached to them (none on an
    emulator without Prices: it has no Entitlements API either).
    """
    remote = await store.read()
    changes = plan_push(catalog, remote)
    products = {p.key: p.id for p in remote.products}
    features = await store.read_features(list(products.values()))
    feature_changes = [] if store.legacy else plan_features(catalog, features, products)
    if dry_run:
        return [*changes, *feature_changes], PushResult()
    result = await apply_push(store, remote, changes)
    await apply_feature_push(store, features, result.products, feature_changes, result)
    return [*changes, *feature_changes], result


def run_push(
    settings: DaemonSettings, catalog: Catalog, *, dry_run: bool
) -> tuple[list[Change | FeatureChange], PushResult, bool]:
    """Blocking, for the CLI: (changes, what was done, whether legacy Plans stood in for Prices)."""

    async def once() -> tuple[list[Change | FeatureChange], PushResult, bool]:
        http = stripe.AIOHTTPClient(timeout=settings.stripe_timeout_s)
        store = StripeCatalogStore(
            settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_base,
            http=http,
            retries=settings.stripe_max_network_retries,
        )
        try:
            changes, result = await push_catalog(catalog, store, dry_run=dry_run)
        finally:
            await http.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped
        return changes, result, store.legacy

    return asyncio.run(once())
