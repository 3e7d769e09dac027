"""The daemon's billing API: Checkout, portal, change, cancel, resume (bearer TIERGATE_API_TOKEN).

Each handler parses, reads the mirror, decides (billing_rules.py), calls Stripe, then feeds
Stripe's answer through the webhook path (EventApplier), so sidecars see the change at once
and the same ordering rules hold when the webhook for it arrives later.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
import structlog
from aiohttp import web

from tiergate.errors import BadRequestError, ConflictError
from tiergate.sync_daemon.billing.actions import Answer, BillingActions, ItemChange, ScheduledChange
from tiergate.sync_daemon.billing.auth import (
    CancelRequest,
    ChangeRequest,
    CheckoutRequest,
    PortalRequest,
    authorize,
    parse_body,
    path_tenant,
)
from tiergate.sync_daemon.billing.redirects import check_redirect
from tiergate.sync_daemon.billing.rules import (
    HOLDS_SUBSCRIPTION,
    Discount,
    Target,
    Timing,
    change_target,
    change_timing,
    checkout_choice,
    checkout_params,
    idempotency_key,
    live_subscription,
    main_item,
    period_end,
    period_start,
    preview_answer,
    proration_date,
    schedule_id,
    sold_price,
)
from tiergate.sync_daemon.billing.stripe_actions import StripeBillingActions
from tiergate.sync_daemon.credits.checkout import (
    PackCheckoutRequest,
    is_pack_checkout,
    pack_checkout_params,
    sold_pack,
)
from tiergate.sync_daemon.mirror.store import Cause, CustomerLink, MirrorAccount, MirrorTxn
from tiergate.sync_daemon.state import APPLIER, CATALOG, MIRROR, SETTINGS
from tiergate.web import json_response

log = structlog.get_logger("tiergate.billing")
ACTIONS = web.AppKey("billing_actions", BillingActions)


# -- handlers --------------------------------------------------------------------------------


async def create_checkout_session(request: web.Request) -> web.Response:
    authorize(request)
    if is_pack_checkout(await request.read()):
        return await create_pack_checkout(request)
    body = await parse_body(request, CheckoutRequest)
    allowed = request.app[SETTINGS].redirect_host_list
    check_redirect(body.success_url, "success_url", allowed)
    check_redirect(body.cancel_url, "cancel_url", allowed)
    catalog = request.app[CATALOG]
    price = sold_price(catalog, body.tier, body.interval)
    account, customer = await request.app[MIRROR].transact(
        lambda txn: _account_and_customer(txn, body.tenant)
    )
    if account is not None and account.subscription_id and account.status in HOLDS_SUBSCRIPTION:
        raise ConflictError(
            f"tenant {body.tenant!r} already has a subscription ({account.status}, tier {account.tier!r}); "
            f"change it with POST /v1/subscriptions/{body.tenant}/change",
            field="tenant",
        )
    actions = request.app[ACTIONS]
    choice = checkout_choice(
        catalog.checkout,
        price,
        discount=await _discount(actions, body),
        currency=body.currency,
        allow_promotion_codes=body.allow_promotion_codes,
        automatic_tax=body.automatic_tax,
        tax_id_collection=body.tax_id_collection,
        billing_address_collection=body.billing_address_collection,
    )
    price_id = await actions.price_for(price.lookup_key)
    if customer is None:
        customer = await _new_customer(request, body.tenant)
    # One trial per tenant: a tenant who ever had a subscription pays from day one.
    trial = catalog.tiers[body.tier].trial_days if account is None or account.subscription_id is None else 0
    params = checkout_params(
        tenant=body.tenant,
        customer_id=customer,
        price_id=price_id,
        quantity=body.quantity,
        trial_days=trial,
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        metadata_key=request.app[SETTINGS].tenant_metadata_key,
        tier=body.tier,
        interval=body.interval,
        choice=choice,
    )
    key = idempotency_key("checkout", body.tenant, request.headers.get("Idempotency-Key"), params)
    session = await actions.create_checkout_session(params, key)
    log.info(
        "checkout_created", tenant=body.tenant, tier=body.tier, interval=body.interval, session=session["id"]
    )
    return json_response({"id": session["id"], "url": session.get("url")}, status=201)


async def create_pack_checkout(request: web.Request) -> web.Response:
    """Checkout in payment mode for a credit pack (docs/credits.md)."""
    body = await parse_body(request, PackCheckoutRequest)
    allowed = request.app[SETTINGS].redirect_host_list
    check_redirect(body.success_url, "success_url", allowed)
    check_redirect(body.cancel_url, "cancel_url", allowed)
    pack = sold_pack(request.app[CATALOG], body.pack)
    _, customer = await request.app[MIRROR].transact(lambda txn: _account_and_customer(txn, body.tenant))
    actions = request.app[ACTIONS]
    price_id = await actions.price_for(pack.price.lookup_key)
    if customer is None:
        customer = await _new_customer(request, body.tenant)
    params = pack_checkout_params(
        tenant=body.tenant,
        customer_id=customer,
        price_id=price_id,
        pack=body.pack,
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        metadata_key=request.app[SETTINGS].tenant_metadata_key,
    )
    key = idempotency_key("pack_checkout", body.tenant, request.headers.get("Idempotency-Key"), params)
    session = await actions.create_checkout_session(params, key)
    log.info("pack_checkout_created", tenant=body.tenant, pack=body.pack, session=session["id"])
    return json_response({"id": session["id"], "url": session.get("url")}, status=201)


async def _discount(actions: BillingActions, body: CheckoutRequest) -> Discount | None:
    if body.promotion_code is not None and body.coupon is not None:
        raise BadRequestError("give promotion_code or coupon, not both", field="coupon")
    if body.coupon is not None:
        return Discount("coupon", body.coupon)
    code = body.promotion_code
    if code is None:
        return None
    if code.startswith("promo_"):
        return Discount("promotion_code", code)
    found = await actions.promotion_code_id(code)
    if found is None:
        raise BadRequestError(f"no active Stripe promotion code is {code!r}", field="promotion_code")
    return Discount("promotion_code", found)


async def create_portal_session(request: web.Request) -> web.Response:
    authorize(request)
    body = await parse_body(request, PortalRequest)
    check_redirect(body.return_url, "return_url", request.app[SETTINGS].redirect_host_list)
    _, customer = await request.app[MIRROR].transact(lambda txn: _account_and_customer(txn, body.tenant))
    if customer is None:
        raise ConflictError(
            f"tenant {body.tenant!r} has no Stripe customer yet; start with POST /v1/checkout/sessions",
            field="tenant",
        )
    session = await request.app[ACTIONS].create_portal_session(customer, body.return_url)
    return json_response({"url": session.get("url")}, status=201)


@dataclass(frozen=True)
class RequestedChange:
    """POST .../change or .../preview, validated: the tenant's live account, target and timing."""

    tenant: str
    account: MirrorAccount
    target: Target
    timing: Timing
    proration_date: int | None  # as given: checked against Stripe's period by `prorated_at`

    @property
    def subscription_id(self) -> str:
        assert self.account.subscription_id is not None  # live_subscription guarantees it
        return self.account.subscription_id

    def prorated_at(self, subscription: dict[str, Any]) -> int | None:
        """The given proration_date once checked against the current period (Stripe's, else the mirror's)."""
        period = (
            period_start(subscription) or _epoch(self.account.current_period_start),
            period_end(subscription) or _epoch(self.account.current_period_end),
        )
        return proration_date(self.proration_date, self.timing, period, _now())


async def _requested_change(request: web.Request, *, resume_hint: bool) -> RequestedChange:
    """The authorized, validated change of POST .../change and .../preview; 409 when the tenant is
    already there."""
    authorize(request)
    tenant = path_tenant(request)
    body = await parse_body(request, ChangeRequest)
    if body.tier is None and body.interval is None and body.quantity is None:
        raise BadRequestError("give at least one of tier, interval, quantity", field="tier")
    account = live_subscription(await _account(request, tenant), tenant)
    catalog = request.app[CATALOG]
    target = change_target(catalog, account, body.tier, body.interval, body.quantity)
    timing = change_timing(catalog, account, target)
    if timing is None:
        hint = f"; POST /v1/subscriptions/{tenant}/resume drops the pending change"
        raise ConflictError(
            f"tenant {tenant!r} is already on {target.tier}/{target.interval} x{target.quantity}"
            + (hint if resume_hint and account.pending_tier else "")
        )
    return RequestedChange(tenant, account, target, timing, body.proration_date)


async def change_subscription(request: web.Request) -> web.Response:
    asked = await _requested_change(request, resume_hint=True)
    tenant, target, timing = asked.tenant, asked.target, asked.timing
    actions = request.app[ACTIONS]
    subscription = await actions.subscription(asked.subscription_id)
    prorated_at = asked.prorated_at(subscription)  # a bad proration_date is a 400 before any change
    item_id, current_price, current_quantity = main_item(subscription)
    await _drop_schedule(request, subscription)  # a new change supersedes a pending one
    price_id = await actions.price_for(target.lookup_key)
    if timing == "now":
        change = ItemChange(asked.subscription_id, item_id, price_id, target.quantity)
        behavior = request.app[SETTINGS].proration_behavior
        answer = await actions.change_now(change, behavior, prorated_at)
        stored = await _apply(request, tenant, answer, clear_pending=True)
    else:
        starts = period_end(subscription) or _now()
        scheduled = ScheduledChange(
            asked.subscription_id,
            current_price,
            current_quantity,
            price_id,
            target.quantity,
            target.interval,
            starts,
        )
        key = idempotency_key(
            "schedule", tenant, request.headers.get("Idempotency-Key"), {"change": str(scheduled)}
        )
        schedule = await actions.schedule_change(scheduled, key)
        stored = await _set_pending(request, tenant, target, _phase_start(schedule, starts))
    log.info(
        "subscription_changed",
        tenant=tenant,
        tier=target.tier,
        quantity=target.quantity,
        effective=timing,
        proration_date=prorated_at,
    )
    return _rendered(tenant, timing, stored)


async def preview_change(request: web.Request) -> web.Response:
    """What POST .../change would charge now, without changing anything (Stripe's preview invoice).

    The answer's `proration_date`, sent with the change, makes Stripe charge what was previewed."""
    asked = await _requested_change(request, resume_hint=False)
    target = asked.target
    answer: dict[str, Any] = {
        "tenant": asked.tenant,
        "tier": target.tier,
        "interval": target.interval,
        "quantity": target.quantity,
        "effective": asked.timing,
    }
    actions = request.app[ACTIONS]
    subscription = await actions.subscription(asked.subscription_id)
    given = asked.prorated_at(subscription)
    at = _now() if given is None else given
    if asked.timing == "period_end":  # nothing is charged before the period ends; the new price then
        price = sold_price(request.app[CATALOG], target.tier, target.interval)
        answer |= {"amount_due_now": 0, "currency": price.currency, "starts_at": period_end(subscription)}
        return json_response(answer)
    item_id, _, _ = main_item(subscription)
    price_id = await actions.price_for(target.lookup_key)
    change = ItemChange(asked.subscription_id, item_id, price_id, target.quantity)
    behavior = request.app[SETTINGS].proration_behavior
    answer |= preview_answer(await actions.preview_change(change, behavior, at), behavior)
    return json_response(answer)


def _now() -> int:
    return int(datetime.now(UTC).timestamp())


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


async def cancel_subscription(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    body = await parse_body(request, CancelRequest, empty_ok=True)
    account = live_subscription(await _account(request, tenant), tenant)
    assert account.subscription_id is not None
    actions = request.app[ACTIONS]
    await _drop_schedule(request, await actions.subscription(account.subscription_id))
    if body.at_period_end:
        answer = await actions.set_cancel_at_period_end(account.subscription_id, True)
    else:
        answer = await actions.cancel_now(account.subscription_id)
    stored = await _apply(request, tenant, answer, clear_pending=True)
    log.info("subscription_canceled", tenant=tenant, at_period_end=body.at_period_end)
    return _rendered(tenant, "period_end" if body.at_period_end else "now", stored)


async def resume_subscription(request: web.Request) -> web.Response:
    """Undo a cancellation at the period end, and drop a pending downgrade."""
    authorize(request)
    tenant = path_tenant(request)
    account = live_subscription(await _account(request, tenant), tenant)
    assert account.subscription_id is not None
    actions = request.app[ACTIONS]
    subscription = await actions.subscription(account.subscription_id)
    canceling = bool(subscription.get("cancel_at_period_end"))
    if not canceling and schedule_id(subscription) is None and account.pending_tier is None:
        raise ConflictError(f"tenant {tenant!r} has no cancellation or pending change to undo")
    await _drop_schedule(request, subscription)
    answer = await actions.set_cancel_at_period_end(account.subscription_id, False) if canceling else None
    stored = await _apply(request, tenant, answer, clear_pending=True)
    log.info("subscription_resumed", tenant=tenant)
    return _rendered(tenant, "now", stored)


# -- plumbing ----------------------------------------------------------------------------------


async def _account(request: web.Request, tenant: str) -> MirrorAccount | None:
    return await request.app[MIRROR].transact(lambda txn: txn.account(tenant))


def _account_and_customer(txn: MirrorTxn, tenant: str) -> tuple[MirrorAccount | None, str | None]:
    account = txn.account(tenant)
    customer = (
        account.stripe_customer_id if account and account.stripe_customer_id else txn.customer_of(tenant)
    )
    return account, customer


async def _new_customer(request: web.Request, tenant: str) -> str:
    key = request.app[SETTINGS].tenant_metadata_key
    customer = await request.app[ACTIONS].create_customer(tenant, key)
    customer_id = str(customer["id"])
    # Linked now, so the subscription's webhooks resolve the tenant even before Checkout completes.
    await request.app[MIRROR].transact(lambda txn: txn.link_customer(CustomerLink(customer_id, tenant)))
    return customer_id


async def _drop_schedule(request: web.Request, subscription: dict[str, Any]) -> None:
    found = schedule_id(subscription)
    if found is not None:
        await request.app[ACTIONS].release_schedule(found)


async def _apply(
    request: web.Request, tenant: str, answer: Answer | None, *, clear_pending: bool
) -> MirrorAccount:
    """Stripe's answer through the webhook path, ordered by Stripe's clock like any event."""
    if answer is not None:
        event = {
            "id": f"tiergate_action_{uuid.uuid4().hex}",
            "type": "customer.subscription.updated",
            "created": answer.as_of,
            "data": {"object": answer.subscription},
        }
        outcome = await request.app[APPLIER].handle(event)
        log.info("action_applied", tenant=tenant, outcome=outcome)

    def settle(txn: MirrorTxn) -> MirrorAccount | None:
        txn.cause = Cause("billing_action", event_type="pending_change_cleared")
        account = txn.account(tenant)
        if account is not None and clear_pending and account.pending_tier is not None:
            account = txn.put_account(
                account.replace(pending_tier=None, pending_interval=None, pending_at=None)
            )
        return account

    stored = await request.app[MIRROR].transact(settle)
    if stored is None:
        raise ConflictError(f"tenant {tenant!r} vanished from the mirror during the change")
    return stored


async def _set_pending(request: web.Request, tenant: str, target: Target, at: int) -> MirrorAccount:
    def put(txn: MirrorTxn) -> MirrorAccount:
        txn.cause = Cause("billing_action", event_type="pending_change_scheduled")
        account = txn.account(tenant)
        assert account is not None
        when = datetime.fromtimestamp(at, UTC)
        return txn.put_account(
            account.replace(pending_tier=target.tier, pending_interval=target.interval, pending_at=when)
        )

    return await request.app[MIRROR].transact(put)


def _phase_start(schedule: dict[str, Any], fallback: int) -> int:
    phases = schedule.get("phases") or []
    start = phases[1].get("start_date") if len(phases) > 1 else None
    return int(start) if start else fallback


def _rendered(tenant: str, effective: str, account: MirrorAccount) -> web.Response:
    body = {
        "tenant": tenant,
        "effective": effective,
        "subscription_id": account.subscription_id,
        "interval": account.interval,
        "account": account.feed(),
    }
    return json_response(body)


def add_billing_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    if settings.api_token is not None and not settings.redirect_hosts:
        log.warning(
            "redirect_hosts_unset",
            setting="TIERGATE_REDIRECT_HOSTS",
            risk="Checkout and the portal send customers back to any http(s) URL a caller gives",
        )
    app.router.add_post("/v1/checkout/sessions", create_checkout_session)
    app.router.add_post("/v1/portal/sessions", create_portal_session)
    app.router.add_post("/v1/subscriptions/{tenant}/change", change_subscription)
    app.router.add_post("/v1/subscriptions/{tenant}/preview", preview_change)
    app.router.add_post("/v1/subscriptions/{tenant}/cancel", cancel_subscription)
    app.router.add_post("/v1/subscriptions/{tenant}/resume", resume_subscription)


def billing_actions_ctx(actions: BillingActions | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the Stripe adapter for billing actions (or use the one a test passes in)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if actions is not None:
            app[ACTIONS] = actions
            yield
            return
        settings = app[SETTINGS]
        http = stripe.AIOHTTPClient(timeout=settings.stripe_timeout_s)
        app[ACTIONS] = StripeBillingActions(
            settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_base,
            http=http,
            retries=settings.stripe_max_network_retries,
        )
        yield
        await http.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped

    return ctx
