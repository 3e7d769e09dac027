"""An async Stripe client on localstripe with the sample catalog's Plans, and a subscribing customer.

Shared by the daemon's integration tests, the outbound tests and the end-to-end stack: localstripe
has no Prices API, so each catalog lookup key is a Plan id (as `tiergate plans push` makes them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import stripe

# The sample catalog's lookup keys and their amounts (cents).
PLANS = {"starter_month": 1900, "pro_month": 4900, "pro_year": 49000}


@contextlib.asynccontextmanager
async def plans_client(base: str, api_key: str, product: str) -> AsyncIterator[stripe.StripeClient]:
    """A client on `base` after creating one Product and a Plan per catalog lookup key."""
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        api_key, base_addresses={"api": base}, http_client=http, max_network_retries=0
    )
    try:
        made = await client.v1.products.create_async({"name": product})
        for plan_id, amount in PLANS.items():
            interval = plan_id.rsplit("_", 1)[1]
            await client.v1.plans.create_async(
                {"id": plan_id, "product": made.id, "amount": amount, "currency": "usd", "interval": interval}
            )
        yield client
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped


async def subscribe(
    api: stripe.StripeClient,
    tenant: str,
    plan: str,
    quantity: int = 1,
    card: str = "pm_card_visa",
    email: str | None = None,
) -> stripe.Subscription:
    """customer (metadata tenant_id, `email`) -> `card` as default payment method -> subscription on a Plan."""
    fields: stripe.params.CustomerCreateParams = {"metadata": {"tenant_id": tenant}}
    if email is not None:
        fields["email"] = email
    customer = await api.v1.customers.create_async(fields)
    method = await api.v1.payment_methods.attach_async(card, {"customer": customer.id})
    await api.v1.customers.update_async(
        customer.id, {"invoice_settings": {"default_payment_method": method.id}}
    )
    return await api.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"plan": plan, "quantity": quantity}]}
    )
