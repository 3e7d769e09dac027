"""Pure: Stripe event payloads -> what they mean for the mirror, and whether they may change it.

Accepts both the current API shape (items carry `price` and `current_period_*`) and the
2017-08-15 shape localstripe sends (`plan`, `quantity` and `current_period_*` on the
subscription). No I/O here: every rule about ordering and mapping is unit-tested without a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tiergate.catalog import Catalog
from tiergate.errors import InvalidTenantError, WebhookRejectedError
from tiergate.models import ENDED_STATUSES, tenant_problem
from tiergate.sync_daemon.mirror.store import MirrorAccount

SUBSCRIPTION_EVENTS = frozenset(
    f"customer.subscription.{kind}"
    for kind in ("created", "updated", "deleted", "paused", "resumed", "trial_will_end")
)
CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})
# localstripe sends invoice.payment_succeeded where Stripe sends invoice.paid; both mean "paid".
PAYMENT_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"})
CHECKOUT_EVENTS = frozenset({"checkout.session.completed"})
HANDLED_EVENTS = SUBSCRIPTION_EVENTS | CUSTOMER_EVENTS | PAYMENT_EVENTS | CHECKOUT_EVENTS


@dataclass(frozen=True)
class SubscriptionState:
    """What one subscription object says, mapped onto the catalog."""

    subscription_id: str
    customer_id: str | None
    tenant: str | None  # from the subscription's or the expanded customer's metadata
    tier: str
    interval: str | None
    price_id: str | None
    unmapped_price: bool
    status: str
    quantity: int
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    addons: tuple[tuple[str, int], ...] = ()  # extra items whose price is a catalog add-on
    email: CustomerEmail | None = None  # the expanded customer's email (None: not expanded)


@dataclass(frozen=True)
class CustomerEmail:
    """A Stripe customer's email as one payload gave it (`address` None: the customer has none)."""

    address: str | None


@dataclass(frozen=True)
class CustomerSeen:
    customer_id: str
    tenant: str | None
    deleted: bool
    email: CustomerEmail | None = None


@dataclass(frozen=True)
class CheckoutCompleted:
    customer_id: str | None
    tenant: str | None
    subscription_id: str | None


@dataclass(frozen=True)
class PaymentOutcome:
    customer_id: str | None
    subscription_id: str | None
    tenant: str | None
    failed: bool
    attempts: int


@dataclass(frozen=True)
class Ignored:
    reason: str


Intent = SubscriptionState | CustomerSeen | CheckoutCompleted | PaymentOutcome | Ignored


class Translator:
    def __init__(self, catalog: Catalog, metadata_key: str = "tenant_id") -> None:
        self.catalog = catalog
        self.metadata_key = metadata_key

    def event(self, event: dict[str, Any]) -> Intent:
        """What `event` means; a WebhookRejectedError names a field of the wrong shape, an
        InvalidTenantError a tenant id that breaks the rule."""
        kind = str(event.get("type", ""))
        if kind not in HANDLED_EVENTS:
            return Ignored(f"event type {kind!r} is not one the mirror uses")
        obj = _object_of(event)
        try:
            return self._intent(kind, obj)
        except StripeFieldError as exc:
            raise WebhookRejectedError(str(exc), field=f"data.object.{exc.field}") from None

    def _intent(self, kind: str, obj: dict[str, Any]) -> Intent:
        if kind in (SUBSCRIPTION_EVENTS | CUSTOMER_EVENTS) and _text(obj.get("id")) is None:
            raise StripeFieldError("id", f"data.object.id={obj.get('id')!r}: expected the object's id")
        if kind in SUBSCRIPTION_EVENTS:
            return self.subscription(obj)
        if kind in CUSTOMER_EVENTS:
            deleted = kind == "customer.deleted"
            email = None if deleted else customer_email(obj, "email")
            return CustomerSeen(obj["id"], self._tenant_of(obj), deleted=deleted, email=email)
        if kind in PAYMENT_EVENTS:
            return self._payment(obj, failed=kind == "invoice.payment_failed")
        if kind in CHECKOUT_EVENTS:
            reference = _checked_tenant(_text(obj.get("client_reference_id")), "client_reference_id")
            tenant = reference or self._tenant_of(obj)
            return CheckoutCompleted(_id_of(obj.get("customer")), tenant, _id_of(obj.get("subscription")))
        raise AssertionError(kind)  # HANDLED_EVENTS is the union of the kinds above

    def subscription(self, sub: dict[str, Any]) -> SubscriptionState:
        item = self._main_item(sub)
        tier, interval, price_id, mapped = self._tier_of(item, sub)
        customer = sub.get("customer")
        tenant = self._tenant_of(sub) or (self._tenant_of(customer) if isinstance(customer, dict) else None)
        return SubscriptionState(
            subscription_id=sub["id"],
            customer_id=_id_of(customer),
            tenant=tenant,
            tier=tier,
            interval=interval,
            price_id=price_id,
            unmapped_price=not mapped,
            status=str(sub.get("status") or "incomplete"),
            quantity=_count(item.get("quantity") or sub.get("quantity") or 1, "quantity"),
            current_period_start=from_epoch(
                item.get("current_period_start") or sub.get("current_period_start"), "current_period_start"
            ),
            current_period_end=from_epoch(
                item.get("current_period_end") or sub.get("current_period_end"), "current_period_end"
            ),
            trial_end=from_epoch(sub.get("trial_end"), "trial_end"),
            cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
            canceled_at=from_epoch(sub.get("canceled_at"), "canceled_at"),
            addons=self._addons(sub, item),
            email=customer_email(customer, "customer.email") if isinstance(customer, dict) else None,
        )

    def _addons(self, sub: dict[str, Any], main: dict[str, Any]) -> tuple[tuple[str, int], ...]:
        """Every item but the tier's that is a catalog add-on, quantities summed per add-on."""
        found: dict[str, int] = {}
        for item in ((sub.get("items") or {}).get("data")) or []:
            if item is main:
                continue
            addon = next((self.catalog.addon_for_lookup_key(k) for k in _price_keys(item) if k), None)
            if addon is not None:
                found[addon] = found.get(addon, 0) + _count(item.get("quantity") or 1, "items.quantity")
        return tuple(sorted(found.items()))

    def _main_item(self, sub: dict[str, Any]) -> dict[str, Any]:
        """The item that decides the tier: the first whose price maps to one, else the first."""
        items: list[dict[str, Any]] = list(((sub.get("items") or {}).get("data")) or [])
        for item in items:
            if self._tier_of(item, sub)[3]:
                return item
        return items[0] if items else {}

    def _tier_of(self, item: dict[str, Any], sub: dict[str, Any]) -> tuple[str, str | None, str | None, bool]:
        price = item.get("price")
        plan = item.get("plan") or sub.get("plan")
        if isinstance(price, dict):
            keys, raw_id = [price.get("lookup_key"), price.get("id")], price.get("id")
            raw_interval = (price.get("recurring") or {}).get("interval")
        elif isinstance(plan, dict):  # legacy Plan (localstripe): its id plays the lookup key
            keys, raw_id, raw_interval = [plan.get("id")], plan.get("id"), plan.get("interval")
        else:
            keys, raw_id, raw_interval = [_text(price)], _text(price), None
        for key in keys:
            found = self.catalog.tier_for_lookup_key(key) if key else None
            if found is not None:
                return found[0], found[1], raw_id, True
        return raw_id or "unknown", raw_interval, raw_id, False

    def _payment(self, invoice: dict[str, Any], *, failed: bool) -> PaymentOutcome:
        details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
        subscription = _id_of(details.get("subscription")) or _id_of(invoice.get("subscription"))
        tenant = self._tenant_of(details) or self._tenant_of(invoice)
        attempts = _count(invoice.get("attempt_count") or (1 if failed else 0), "attempt_count")
        return PaymentOutcome(_id_of(invoice.get("customer")), subscription, tenant, failed, attempts)

    def _tenant_of(self, obj: Any) -> str | None:
        if not isinstance(obj, dict):
            return None
        metadata = obj.get("metadata")
        tenant = _text(metadata.get(self.metadata_key)) if isinstance(metadata, dict) else None
        return _checked_tenant(tenant, f"metadata.{self.metadata_key}")


# -- ordering and merging -------------------------------------------------------------------


def decide_subscription(
    current: MirrorAccount | None,
    state: SubscriptionState,
    tenant: str,
    created: int,
    *,
    fetched: bool = False,
) -> tuple[MirrorAccount | None, str]:
    """The account after this subscription state, and why; None when the mirror must not change.

    `created` orders events (whole seconds). An older event never wins. A same-second tie is
    applied only as a fresh copy from Stripe (`fetched`); otherwise it is applied too, but the
    account is marked for reconciliation, because which of the two is newer is unknowable.
    """
    if current is not None:
        other = current.subscription_id not in (None, state.subscription_id)
        # an ended subscription grants nothing: never let it displace a live one
        if other and state.status in ENDED_STATUSES and current.status not in ENDED_STATUSES:
            return None, "other_subscription"
        if created < current.stripe_updated:
            return None, "stale"
    tie = current is not None and created == current.stripe_updated and not fetched
    base = current or MirrorAccount(tenant=tenant, tier=state.tier, status=state.status)
    account = base.replace(
        stripe_customer_id=state.customer_id or base.stripe_customer_id,
        subscription_id=state.subscription_id,
        tier=state.tier,
        interval=state.interval,
        status=state.status,
        quantity=state.quantity,
        current_period_start=state.current_period_start,
        current_period_end=state.current_period_end,
        trial_end=state.trial_end,
        cancel_at_period_end=state.cancel_at_period_end,
        canceled_at=state.canceled_at,
        addons=state.addons,
        unmapped_price=state.unmapped_price,
        stripe_updated=max(created, base.stripe_updated),
        needs_reconcile=tie,
    )
    return account, ("refetched" if fetched else "tie_unresolved" if tie else "applied")


def decide_payment(
    current: MirrorAccount | None, payment: PaymentOutcome, created: int
) -> tuple[MirrorAccount | None, str]:
    """A failed payment opens (or continues) a past-due episode; a paid invoice closes it."""
    if current is None:
        return None, "no_account"
    if created < current.payment_updated:
        return None, "stale"
    if payment.failed:
        since = current.past_due_since or from_epoch(created)
        return current.replace(
            past_due_since=since, payment_attempts=payment.attempts, payment_updated=created
        ), "applied"
    return current.replace(past_due_since=None, payment_attempts=0, payment_updated=created), "applied"


def _price_keys(item: dict[str, Any]) -> list[str | None]:
    """The lookup key and id of an item's price (or legacy Plan, whose id plays the lookup key)."""
    price, plan = item.get("price"), item.get("plan")
    if isinstance(price, dict):
        return [_text(price.get("lookup_key")), _text(price.get("id"))]
    if isinstance(plan, dict):
        return [_text(plan.get("id"))]
    return [_text(price)]


MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z, datetime's last second


class StripeFieldError(ValueError):
    """A Stripe object's field of the wrong type or range (`field` is its path in the object)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def from_epoch(value: Any, field: str = "timestamp") -> datetime | None:
    """Unix seconds (an integer) as a UTC datetime; None stays None; anything else is a StripeFieldError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EPOCH:
        raise StripeFieldError(field, f"{field}={value!r} is not Unix seconds (an integer)")
    return datetime.fromtimestamp(value, UTC)


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise StripeFieldError(field, f"{field}={value!r} is not a count (an integer from 0)")
    return value


def _object_of(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    if not isinstance(data, dict):
        raise WebhookRejectedError(
            f"the event's data is {type(data).__name__}: expected an object", field="data"
        )
    obj = data.get("object")
    if not isinstance(obj, dict):
        shown = "null" if obj is None else type(obj).__name__
        raise WebhookRejectedError(
            f"data.object is {shown}: expected the event's object", field="data.object"
        )
    return obj


def _checked_tenant(tenant: str | None, field: str) -> str | None:
    """A tenant id from Stripe, stripped, under the rule the sidecars apply; else InvalidTenantError."""
    if tenant is None:
        return None
    tenant = tenant.strip()
    problem = tenant_problem(tenant)
    if problem is not None:
        raise InvalidTenantError(f"{field}: the tenant id {problem}", field=field)
    return tenant


MAX_EMAIL_CHARS = 512  # Stripe's own limit on a customer's email


def customer_email(customer: dict[str, Any], field: str) -> CustomerEmail | None:
    """The customer object's email (None when the object has no `email` key, e.g. a partial one)."""
    if "email" not in customer:
        return None
    value = customer["email"]
    if value is None or (isinstance(value, str) and not value.strip()):
        return CustomerEmail(None)
    if not isinstance(value, str) or len(value) > MAX_EMAIL_CHARS or not value.isprintable():
        raise StripeFieldError(
            field, f"{field}: expected an email address of at most {MAX_EMAIL_CHARS} printable characters"
        )
    return CustomerEmail(value.strip())


def _id_of(value: Any) -> str | None:
    """A Stripe reference is an id, or the object itself when expanded."""
    if isinstance(value, dict):
        return _text(value.get("id"))
    return _text(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
