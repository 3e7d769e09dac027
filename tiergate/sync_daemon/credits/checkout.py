"""Buying a credit pack: the Checkout Session in payment mode (pure parameters and the request body).

`POST /v1/checkout/sessions` with `{tenant, pack, success_url, cancel_url}` (instead of `tier`)
opens Checkout for the pack's one-time price; `checkout.session.completed`, paid, grants it once
(tiergate/sync_daemon/credits/purchases.py). The payment method is saved for off-session use, so
an automatic top-up can charge it later.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tiergate.catalog import Catalog, Identifier, Pack
from tiergate.errors import BadRequestError
from tiergate.models import TenantId
from tiergate.sync_daemon.billing.auth import Url
from tiergate.sync_daemon.credits.purchases import PACK_KEY


class PackCheckoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TenantId
    pack: Annotated[str, Field(min_length=1, max_length=63)]
    success_url: Url
    cancel_url: Url


def is_pack_checkout(raw: bytes) -> bool:
    """Whether a Checkout request body asks for a pack (`"pack"` at its top level); a body that is
    not a JSON object is left to the subscription path, which names the problem."""
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    return isinstance(body, dict) and "pack" in body


def sold_pack(catalog: Catalog, name: str) -> Pack:
    pack = catalog.packs.get(name)
    if pack is None:
        raise BadRequestError(
            f"pack {name!r} is not in the catalog (known: {sorted(catalog.packs)})", field="pack"
        )
    return pack


def pack_checkout_params(
    *,
    tenant: str,
    customer_id: str,
    price_id: str,
    pack: Identifier,
    success_url: str,
    cancel_url: str,
    metadata_key: str,
) -> dict[str, Any]:
    """A payment-mode Checkout Session carrying the tenant and the pack where the webhook looks."""
    metadata = {metadata_key: tenant, PACK_KEY: pack}
    return {
        "mode": "payment",
        "customer": customer_id,
        "client_reference_id": tenant,
        "line_items": [{"price": price_id, "quantity": 1}],
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata, "setup_future_usage": "off_session"},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
