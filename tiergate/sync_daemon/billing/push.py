"""`tiergate plans push`: the catalog -> Stripe products and prices, as a pure plan of changes.

`plan_push` compares the catalog with what Stripe holds and returns the changes, nothing else;
`apply_push` carries them out through a small `CatalogStore` port (the Stripe adapter lives in
tiergate/sync_daemon/billing/stripe_catalog.py). Prices are never deleted: Stripe keeps them for old
invoices and subscriptions, so a price that left the catalog is only deactivated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tiergate.catalog import Catalog, Price

# Products of add-ons are keyed "addon:<name>", credit packs' "pack:<name>", tiers' the tier's name.
ADDON_PREFIX = "addon:"
PACK_PREFIX = "pack:"
ONCE = "once"  # a pack's price is one-time: no recurring interval


def what(key: str) -> str:
    """A product key as people read it: `tier 'pro'`, `add-on 'extra_storage'` or `pack 'ai_5000'`."""
    if key.startswith(ADDON_PREFIX):
        return f"add-on {key.removeprefix(ADDON_PREFIX)!r}"
    return f"pack {key.removeprefix(PACK_PREFIX)!r}" if key.startswith(PACK_PREFIX) else f"tier {key!r}"


@dataclass(frozen=True)
class Sellable:
    """What gets a Stripe product: a tier with prices (the free default has none) or an add-on."""

    key: str  # the product's key: the tier's name, or addon:<name>
    name: str
    prices: dict[str, Price]  # by interval
    features: frozenset[str]  # what its product carries in Stripe: the features it grants or changes


def sellables(catalog: Catalog) -> list[Sellable]:
    """Every tier with prices, then every add-on."""
    found = [
        Sellable(
            name,
            tier.name or name,
            {str(k): p for k, p in tier.prices.items()},
            frozenset(feature for feature, value in tier.features.items() if value is not False),
        )
        for name, tier in catalog.tiers.items()
        if tier.prices
    ]
    found += [
        Sellable(
            ADDON_PREFIX + name,
            addon.name or name,
            {str(k): p for k, p in addon.prices.items()},
            frozenset(addon.features),
        )
        for name, addon in catalog.addons.items()
    ]
    found += [
        Sellable(PACK_PREFIX + name, pack.name or name, {ONCE: pack.price}, frozenset())
        for name, pack in catalog.packs.items()
    ]
    return found


@dataclass(frozen=True)
class Remote:
    """A Stripe object tiergate made and knows by its key: a product (key: metadata.tier, a tier's
    name or addon:<name>) or an Entitlements Feature (key: its lookup_key)."""

    id: str
    key: str
    name: str
    active: bool = True


@dataclass(frozen=True)
class RemotePrice:
    id: str
    product: str
    lookup_key: str | None
    unit_amount: int | None
    currency: str
    interval: str | None  # None: a one-time price (a pack's)
    active: bool = True
    currency_options: tuple[tuple[str, int], ...] = ()  # other currencies, sorted: (currency, amount)


@dataclass(frozen=True)
class RemoteCatalog:
    products: Sequence[Remote] = ()
    prices: Sequence[RemotePrice] = ()
    # An emulator without Prices (localstripe): a Plan whose id is the lookup key stands in.
    legacy_plans: bool = False
    # The event_name of every Billing Meter Stripe holds; None: no meters API (an emulator).
    meters: frozenset[str] | None = frozenset()


@dataclass(frozen=True)
class CreateProduct:
    tier: str
    name: str

    def describe(self) -> str:
        return f"create product for {what(self.tier)} ({self.name})"


@dataclass(frozen=True)
class UpdateProduct:
    product_id: str
    tier: str
    name: str

    def describe(self) -> str:
        return f"update product {self.product_id} ({what(self.tier)}): name {self.name!r}, active"


@dataclass(frozen=True)
class CreatePrice:
    tier: str
    interval: str
    lookup_key: str
    unit_amount: int
    currency: str
    replaces: str | None = None  # the price that holds the lookup key now: it moves to the new one
    currency_options: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        amount = f"{self.unit_amount} {self.currency}/{self.interval}"
        amount += "".join(f", {value} {currency}" for currency, value in self.currency_options)
        moved = f", moving the lookup key from {self.replaces}" if self.replaces else ""
        return f"create price {self.lookup_key!r} for {what(self.tier)}: {amount}{moved}"

    def idempotency_key(self) -> str:
        # A retry of the same push reuses the price; a different change gets a different key.
        parts = f"{self.lookup_key}|{self.unit_amount}|{self.currency}|{self.interval}|{self.replaces}"
        if self.currency_options:
            parts += f"|{self.currency_options}"
        return "tiergate-price-" + hashlib.sha256(parts.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SetPriceActive:
    price_id: str
    lookup_key: str | None
    active: bool
    why: str

    def describe(self) -> str:
        verb = "reactivate" if self.active else "deactivate"
        return f"{verb} price {self.price_id} ({self.lookup_key or 'no lookup key'}): {self.why}"


@dataclass(frozen=True)
class Unchangeable:
    """A change an emulator's Plans cannot express (a Plan's amount is fixed): reported, not done."""

    lookup_key: str
    why: str

    def describe(self) -> str:
        return f"skip {self.lookup_key!r}: {self.why}"


@dataclass(frozen=True)
class CreateMeter:
    """A Billing Meter for a catalog metric's `meter`: the sum of the events' values per customer id,
    or for a gauge (`aggregation: latest`) the last value (Stripe's `last` formula)."""

    code: str
    event_name: str
    formula: str = "sum"

    def describe(self) -> str:
        return (
            f"create meter {self.event_name!r} for metric {self.code!r} "
            f"({self.formula} of value per stripe_customer_id)"
        )

    def idempotency_key(self) -> str:
        return f"tiergate-meter-{self.event_name}"


Change = CreateProduct | UpdateProduct | CreatePrice | SetPriceActive | CreateMeter | Unchangeable


def plan_push(catalog: Catalog, remote: RemoteCatalog) -> list[Change]:
    """The changes that make Stripe hold the catalog's products and prices; [] when it already does."""
    changes: list[Change] = []
    ours = {p.key: p for p in remote.products}
    sold = sellables(catalog)
    for sellable in sold:
        product = ours.get(sellable.key)
        if product is None:
            changes.append(CreateProduct(sellable.key, sellable.name))
        elif product.name != sellable.name or not product.active:
            changes.append(UpdateProduct(product.id, sellable.key, sellable.name))
    wanted: set[str] = set()
    for sellable in sold:
        tier_name = sellable.key
        for interval, price in sellable.prices.items():
            wanted.add(price.lookup_key)
            holder = next((p for p in remote.prices if p.lookup_key == price.lookup_key), None)
            product = ours.get(tier_name)
            options = tuple(sorted(price.currency_options.items()))
            if interval == ONCE and remote.legacy_plans:
                changes.append(
                    Unchangeable(
                        price.lookup_key, "this Stripe (an emulator) has no one-time prices for packs"
                    )
                )
                continue
            same = holder is not None and (
                (holder.unit_amount, holder.currency, holder.interval or ONCE)
                == (price.unit_amount, price.currency, interval)
                # Plans (an emulator) have no currency options: nothing to compare there.
                and (remote.legacy_plans or holder.currency_options == options)
                and product is not None
                and holder.product == product.id
            )
            if holder is not None and same:
                if not holder.active:
                    changes.append(SetPriceActive(holder.id, holder.lookup_key, True, "back in the catalog"))
                continue
            if holder is not None and remote.legacy_plans:
                changes.append(
                    Unchangeable(
                        price.lookup_key, "a Plan's amount cannot change; recreate the emulator's data"
                    )
                )
                continue
            replaces = holder.id if holder is not None else None
            changes.append(
                CreatePrice(
                    tier_name,
                    interval,
                    price.lookup_key,
                    price.unit_amount,
                    price.currency,
                    replaces,
                    () if remote.legacy_plans else options,
                )
            )
            if holder is not None and holder.active:
                changes.append(
                    SetPriceActive(holder.id, holder.lookup_key, False, "replaced by a new amount")
                )
    for old in remote.prices:
        if old.active and (old.lookup_key is None or old.lookup_key not in wanted):
            changes.append(SetPriceActive(old.id, old.lookup_key, False, "no longer in the catalog"))
    return changes + plan_meters(catalog, remote)


def plan_meters(catalog: Catalog, remote: RemoteCatalog) -> list[Change]:
    """A meter for every metric that names one Stripe does not hold (meters are never changed:
    Stripe lets only their display name change)."""
    changes: list[Change] = []
    for code, metric in catalog.metrics.items():
        if metric.meter is None:
            continue
        if remote.meters is None:
            changes.append(Unchangeable(metric.meter, "this Stripe (an emulator) has no Billing Meters API"))
        elif metric.meter not in remote.meters:
            changes.append(
                CreateMeter(code, metric.meter, "last" if metric.aggregation == "latest" else "sum")
            )
    return changes


class CatalogStore(Protocol):
    """What the push needs from Stripe; the adapter decides between Prices and legacy Plans."""

    async def read(self) -> RemoteCatalog: ...

    async def create_product(self, change: CreateProduct) -> str: ...

    async def update_product(self, change: UpdateProduct) -> None: ...

    async def create_price(self, change: CreatePrice, product_id: str) -> str: ...

    async def set_price_active(self, change: SetPriceActive) -> None: ...

    async def create_meter(self, change: CreateMeter) -> None: ...


@dataclass
class PushResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    products: dict[str, str] = field(default_factory=dict)  # product key -> Stripe id, after the push


async def apply_push(store: CatalogStore, remote: RemoteCatalog, changes: Sequence[Change]) -> PushResult:
    """Carry out `changes` in order: products before the prices that need them.

    A new price is created before the old one is deactivated, so the lookup key always names
    an active price for Checkout.
    """
    result = PushResult()
    products = result.products
    products.update({p.key: p.id for p in remote.products})
    for change in changes:
        if isinstance(change, CreateProduct):
            products[change.tier] = await store.create_product(change)
        elif isinstance(change, UpdateProduct):
            await store.update_product(change)
        elif isinstance(change, CreatePrice):
            await store.create_price(change, products[change.tier])
        elif isinstance(change, SetPriceActive):
            await store.set_price_active(change)
        elif isinstance(change, CreateMeter):
            await store.create_meter(change)
        else:
            result.skipped.append(change.describe())
            continue
        result.done.append(change.describe())
    return result
