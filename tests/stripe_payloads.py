"""Signed Stripe webhook payloads built from tests/fixtures/stripe, for the daemon's tests."""

from __future__ import annotations

import copy
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import stripe

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe"
SECRET = "whsec_test_tiergate"


@cache
def _fixture_text(name: str) -> str:
    return (FIXTURES / "events" / f"{name}.json").read_text()


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of events/<name>.json (e.g. "customer.subscription.created")."""
    event: dict[str, Any] = json.loads(_fixture_text(name))
    return event


def subscription_event(
    name: str,
    *,
    event_id: str | None = None,
    created: int | None = None,
    tenant: str | None = "t_alice",
    lookup_key: str | None = "pro_month",
    price_id: str | None = None,
    quantity: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A subscription fixture event with the fields our code reads overridden.

    The fixtures carry their own prices (`pro_monthly`) and metadata (`app_user_id`); by default
    the price becomes the sample catalog's `pro_month` and `metadata.tenant_id` is set.
    """
    event = load_event(name)
    sub = event["data"]["object"]
    if event_id is not None:
        event["id"] = event_id
    if created is not None:
        event["created"] = created
    if tenant is not None:
        sub["metadata"] = {"tenant_id": tenant}
    item = sub["items"]["data"][0]
    if lookup_key is not None or price_id is not None:
        item["price"]["lookup_key"] = lookup_key
        item["price"]["id"] = item["plan"]["id"] = price_id or f"price_{lookup_key}"
    if quantity is not None:
        item["quantity"] = quantity
    sub.update(fields)
    return event


def invoice_event(name: str, *, tenant: str | None = "t_alice", **fields: Any) -> dict[str, Any]:
    event = load_event(name)
    invoice = event["data"]["object"]
    if tenant is not None:
        invoice["parent"]["subscription_details"]["metadata"] = {"tenant_id": tenant}
    event.update(fields)
    return event


def customer_event(
    kind: str = "customer.created",
    *,
    event_id: str = "evt_customer",
    created: int | None = None,
    customer_id: str = "cus_fixtureAlice01",
    tenant: str | None = "t_alice",
    **fields: Any,
) -> dict[str, Any]:
    """A `customer.*` event (created, updated, deleted) whose object carries `fields` (e.g. email)."""
    customer = {
        "id": customer_id,
        "object": "customer",
        "email": None,
        "metadata": {"tenant_id": tenant} if tenant is not None else {},
        **fields,
    }
    return {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": created if created is not None else int(time.time()),
        "data": {"object": customer},
    }


def with_object(event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(event)
    out["data"]["object"].update(fields)
    return out


def sign(raw: str | bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """`t=<unix>,v1=<hmac>` exactly as Stripe computes it, with the library's own helper."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    header: str = stripe.WebhookSignature.generate_signature_header(
        text, secret, timestamp=timestamp if timestamp is not None else int(time.time())
    )
    return header


def signed(
    event: dict[str, Any] | str, secret: str = SECRET, timestamp: int | None = None
) -> tuple[str, dict[str, str]]:
    """The raw body and the headers to POST it with."""
    raw = event if isinstance(event, str) else json.dumps(event)
    return raw, {"Stripe-Signature": sign(raw, secret, timestamp), "Content-Type": "application/json"}


def recorded(name: str) -> dict[str, Any]:
    """A localstripe delivery: {"secret", "stripe_signature", "raw_body", "description"}."""
    delivery: dict[str, Any] = json.loads((FIXTURES / "localstripe-recorded" / f"{name}.json").read_text())
    return delivery
