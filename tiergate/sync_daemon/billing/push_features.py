"""`plans push`, part two: Stripe Entitlements Features for the catalog's features, attached to products.

Stripe's own entitlement views (the Dashboard, `entitlements.active_entitlements`, the
`entitlements.active_entitlement_summary.updated` webhook) then agree with tiergate: a tier's
product carries every feature its tier grants in some form (`true`, `{}` or `{limit: N}`), an
add-on's product the features it changes. Stripe's features are on/off: limits stay in tiergate.
Pure like `plan_push`: the changes, then `apply_feature_push` through the `FeatureStore` port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tiergate.catalog import Catalog
from tiergate.sync_daemon.billing.push import PushResult, Remote, sellables, what


@dataclass(frozen=True)
class Attachment:
    """A feature attached to a product (Stripe's product_feature)."""

    id: str
    product_id: str
    feature_lookup_key: str


@dataclass(frozen=True)
class RemoteFeatures:
    features: Sequence[Remote] = ()
    attachments: Sequence[Attachment] = ()


@dataclass(frozen=True)
class CreateFeature:
    lookup_key: str
    name: str

    def describe(self) -> str:
        return f"create entitlement feature {self.lookup_key!r}"


@dataclass(frozen=True)
class AttachFeature:
    product: str  # the product's catalog key: a tier, or addon:<name>
    lookup_key: str

    def describe(self) -> str:
        return f"attach feature {self.lookup_key!r} to the product of {what(self.product)}"


@dataclass(frozen=True)
class DetachFeature:
    product_id: str
    attachment_id: str
    lookup_key: str

    def describe(self) -> str:
        return f"detach feature {self.lookup_key!r} from product {self.product_id}: no longer granted"


FeatureChange = CreateFeature | AttachFeature | DetachFeature


def plan_features(
    catalog: Catalog, remote: RemoteFeatures, products: Mapping[str, str]
) -> list[FeatureChange]:
    """The changes that make Stripe's features and attachments match the catalog.

    `products` maps product keys to the ids Stripe holds (a product still to be created is
    absent: its attachments are planned all the same and made once it exists).
    """
    changes: list[FeatureChange] = []
    known = {f.key for f in remote.features}
    for feature in sorted(catalog.features - known):
        changes.append(CreateFeature(feature, feature.replace("_", " ").capitalize()))
    by_product: dict[str, dict[str, Attachment]] = {}
    for attachment in remote.attachments:
        by_product.setdefault(attachment.product_id, {})[attachment.feature_lookup_key] = attachment
    for sellable in sellables(catalog):
        held = by_product.get(products.get(sellable.key, ""), {})
        wanted = sellable.features
        changes += [AttachFeature(sellable.key, feature) for feature in sorted(wanted - set(held))]
        changes += [
            DetachFeature(a.product_id, a.id, lookup)
            for lookup, a in sorted(held.items())
            if lookup not in wanted
        ]
    return changes


class FeatureStore(Protocol):
    """Stripe's Entitlements Features and product features, as the push needs them."""

    async def read_features(self, product_ids: Sequence[str]) -> RemoteFeatures: ...

    async def create_feature(self, change: CreateFeature) -> str: ...

    async def attach_feature(self, product_id: str, feature_id: str) -> None: ...

    async def detach_feature(self, change: DetachFeature) -> None: ...


async def apply_feature_push(
    store: FeatureStore,
    remote: RemoteFeatures,
    products: Mapping[str, str],
    changes: Sequence[FeatureChange],
    result: PushResult,
) -> None:
    """Features first, then attachments (which need a feature id and a product id)."""
    ids = {f.key: f.id for f in remote.features}
    for change in changes:
        if isinstance(change, CreateFeature):
            ids[change.lookup_key] = await store.create_feature(change)
        elif isinstance(change, AttachFeature):
            await store.attach_feature(products[change.product], ids[change.lookup_key])
        else:
            await store.detach_feature(change)
        result.done.append(change.describe())
