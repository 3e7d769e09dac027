"""Usage events (pure): Lago's event shape, validation against the catalog's metrics, periods.

Both processes use this module: the sidecar validates what the app posts (resolving an
`external_subscription_id` to its tenant through the replica) and assigns the period it counts
the event in locally; the daemon validates again what sidecars deliver and assigns the
authoritative period. Every field Lago defines is kept as sent, so a sink can forward it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from tiergate import exact_json
from tiergate.amounts import Amount, AmountError, add, event_amount
from tiergate.models import MAX_QUANTITY, Account
from tiergate.periods import rfc3339, usage_period

MAX_EVENTS = 100  # per POST /v1/usage/batch at the sidecar, like Lago
# Whatever gets a 202 must be deliverable: a bounded event fits any delivery batch and encodes
# without deep recursion (an event nested ~1,000 deep once wedged delivery for every tenant).
MAX_PROPERTIES_BYTES = 4096  # `properties` as compact JSON
MAX_PROPERTIES_DEPTH = 32  # nesting of objects and arrays inside `properties`
MAX_FUTURE = timedelta(days=1)  # clock skew we tolerate on a caller's timestamp
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

# Identifiers are kept exactly as sent (Lago compares them byte for byte); only emptiness is refused.
Ident = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"\S")]
CustomerId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
Code = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]

# What a sidecar adds to the Lago document it delivers: the tenant it resolved the event to.
TENANT_KEY = "tiergate_tenant"

# The "period" of a gauge (`aggregation: latest`, e.g. seats in use): one that never ends, so a
# gauge is never reset; counters keyed by it are read beside every period's (docs/usage.md).
GAUGE_PERIOD = datetime(9999, 12, 31, tzinfo=UTC)
GAUGE_PERIOD_START = "9999-12-31T00:00:00Z"


def is_gauge(period_start: str) -> bool:
    """A counter key's period_start says whether it is a gauge."""
    return period_start == GAUGE_PERIOD_START


class UsageEvent(BaseModel):
    """One event as Lago defines it (`EventInputObject`); unknown top-level keys are ignored, as Lago does."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: Ident
    external_customer_id: CustomerId | None = None
    external_subscription_id: Ident | None = None
    code: Code
    timestamp: int | float | Decimal | str | None = None  # Unix seconds (Lago) or RFC 3339
    precise_total_amount_cents: object = None  # Lago: a decimal string, for dynamic pricing (checked below)
    properties: dict[str, Any] | None = None  # Lago takes null as {}


@dataclass(frozen=True)
class ValidEvent:
    """A validated event: whose it is, when it happened, what it adds to its metric, and Lago's fields."""

    tenant: str
    transaction_id: str
    code: str
    at: datetime
    value: Amount  # exact: an int, or a Decimal for a fractional sum value (tiergate/amounts.py)
    properties: dict[str, Any] = field(default_factory=dict, compare=False)
    external_subscription_id: str | None = None
    # Lago's document as sent (timestamp fixed at acceptance when absent); None: built here.
    document: dict[str, Any] | None = field(default=None, compare=False)
    gauge: bool = False  # its metric is `latest`: the value replaces, the newest timestamp wins

    def lago(self) -> dict[str, Any]:
        """The event in Lago's shape, every field as the caller sent it: what sinks forward."""
        if self.document is not None:
            return dict(self.document)
        body: dict[str, Any] = {
            "transaction_id": self.transaction_id,
            "external_customer_id": self.tenant,
            "code": self.code,
            "timestamp": self.at.timestamp(),
            "properties": self.properties,
        }
        if self.external_subscription_id is not None:
            body["external_subscription_id"] = self.external_subscription_id
        return body

    def wire(self) -> dict[str, Any]:
        """What a sidecar delivers to the daemon: Lago's document plus the tenant it resolved."""
        return {**self.lago(), TENANT_KEY: self.tenant}


class EventError(ValueError):
    """One event is unacceptable; `field` is its path inside the event (`code`, `properties.gb`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# Resolves a Stripe subscription id (Lago's `external_subscription_id`) to its tenant, or None.
SubscriptionResolver = Callable[[str], str | None]


def parse_event(
    raw: object,
    metrics: Mapping[str, Any],
    now: datetime,
    resolve: SubscriptionResolver | None = None,
) -> ValidEvent:
    """Validate one raw event against the catalog's `metrics` (its policy-data form); raises EventError.

    `resolve` finds the tenant of an `external_subscription_id` (the sidecar's replica). Without
    it (the daemon) the tenant is the one the delivering sidecar resolved (`tiergate_tenant`), else
    `external_customer_id`.
    """
    if isinstance(raw, Mapping):
        check_properties(raw.get("properties"))
    try:
        event = UsageEvent.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in err["loc"]) or "event"
        raise EventError(loc, _message(err)) from None
    assert isinstance(raw, Mapping)  # model_validate accepted it
    tenant = _tenant(event, raw.get(TENANT_KEY) if resolve is None else None, resolve)
    metric = metrics.get(event.code)
    if not isinstance(metric, Mapping):
        raise EventError("code", f"{event.code!r} is not a metric of the catalog (known: {sorted(metrics)})")
    properties = event.properties if event.properties is not None else {}
    _amount(event.precise_total_amount_cents)
    at = event_time(event.timestamp, now)
    return ValidEvent(
        tenant=tenant,
        transaction_id=event.transaction_id,
        code=event.code,
        at=at,
        value=metric_value(metric, properties),
        properties=properties,
        external_subscription_id=event.external_subscription_id,
        document=_document(event, raw, at),
        gauge=metric.get("aggregation") == "latest",
    )


def check_properties(properties: object) -> None:
    """Bound `properties` in depth (without recursing) and in encoded size; raises EventError."""
    if properties is None:
        return
    if _depth(properties) > MAX_PROPERTIES_DEPTH:
        raise EventError("properties", f"nests more than the {MAX_PROPERTIES_DEPTH} levels accepted")
    try:
        size = len(exact_json.dumps(properties))
    except (TypeError, ValueError) as exc:
        raise EventError("properties", f"is not encodable as JSON: {exc}") from None
    if size > MAX_PROPERTIES_BYTES:
        raise EventError(
            "properties", f"is {size} bytes as JSON; at most {MAX_PROPERTIES_BYTES} bytes are accepted"
        )


def _depth(value: object) -> int:
    """How deeply objects and arrays nest in `value` (a scalar is 0), iteratively."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, Mapping) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_PROPERTIES_DEPTH:
            return deepest  # enough to refuse; no need to walk the rest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _amount(value: object) -> None:
    where = "precise_total_amount_cents"
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError(where, f"must be a decimal string such as '1234.56' (no floats), got {value!r}")
    _decimal(value, where)


def _message(err: Mapping[str, Any]) -> str:
    if err["type"] == "string_pattern_mismatch":
        return "must not be blank (identifiers are kept exactly as sent)"
    return str(err["msg"])


def _tenant(event: UsageEvent, delivered: object, resolve: SubscriptionResolver | None) -> str:
    if isinstance(delivered, str) and delivered:
        return delivered
    customer, subscription = event.external_customer_id, event.external_subscription_id
    if subscription is None or resolve is None:
        if customer is None:
            raise EventError(
                "external_customer_id",
                "required: an external_subscription_id or an external_customer_id (the tenant)",
            )
        return customer
    owner = resolve(subscription)
    if owner is None:
        if customer is not None:
            return customer  # a subscription the replica has not seen yet: the customer decides
        raise EventError(
            "external_subscription_id",
            f"{subscription!r} is not the subscription of any tenant this sidecar knows "
            "(send external_customer_id for a tenant without a subscription)",
        )
    if customer is not None and customer != owner:
        raise EventError(
            "external_customer_id",
            f"{customer!r} does not own external_subscription_id {subscription!r} (its tenant is {owner!r})",
        )
    return owner


def _document(event: UsageEvent, raw: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    """Lago's fields as sent; a missing timestamp becomes the acceptance time, as Lago does."""
    document = {name: raw[name] for name in UsageEvent.model_fields if name in raw}
    if event.timestamp is None:
        document["timestamp"] = at.timestamp()
    elif isinstance(event.timestamp, str) and not _numeric(event.timestamp):
        document["timestamp"] = at.timestamp()  # RFC 3339, a tiergate extension: Lago takes seconds
    return document


def metric_value(metric: Mapping[str, Any], properties: Mapping[str, Any]) -> Amount:
    """What one event says: 1 for `count`; for `sum` the property `field` it adds, exactly (a
    decimal, or negative for a correction); for `latest` the current value, never negative."""
    aggregation = metric.get("aggregation")
    if aggregation not in ("sum", "latest"):
        return 1
    name = str(metric.get("field"))
    where = f"properties.{name}"
    if name not in properties:
        raise EventError(where, f"required: metric aggregates {aggregation} of {name!r}")
    try:
        value = event_amount(properties[name], MAX_QUANTITY)
    except AmountError as exc:
        raise EventError(where, str(exc)) from None
    if aggregation == "latest" and value < 0:
        raise EventError(
            where, f"must be at least 0: it is the current value (a gauge), got {properties[name]!r}"
        )
    return value


def _decimal(value: int | float | str, where: str) -> Decimal:
    """Exact: a float is read through its shortest repr (what the JSON said), never its binary value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError(where, f"must be a finite number, got {value!r}")
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise EventError(where, f"must be a number, got {value!r}") from None
    if not number.is_finite():
        raise EventError(where, f"must be a finite number, got {value!r}")
    return number


def event_time(timestamp: int | float | Decimal | str | None, now: datetime) -> datetime:
    """Unix seconds or RFC 3339; none means now. Raises EventError for the absurd."""
    if timestamp is None:
        return now
    try:
        if isinstance(timestamp, str) and not _numeric(timestamp):
            at = datetime.fromisoformat(timestamp)
            if at.tzinfo is None:
                raise EventError("timestamp", f"{timestamp!r} has no UTC offset (e.g. 2026-01-31T10:00:00Z)")
        else:
            at = datetime.fromtimestamp(float(timestamp), UTC)
    except (ValueError, OverflowError, OSError):
        raise EventError("timestamp", f"{timestamp!r} is neither Unix seconds nor RFC 3339") from None
    at = at.astimezone(UTC)
    if at > now + MAX_FUTURE:
        raise EventError("timestamp", f"{rfc3339(at)} is more than a day in the future")
    if at < EARLIEST:
        raise EventError("timestamp", f"{rfc3339(at)} is before {rfc3339(EARLIEST)}")
    return at


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def event_period(
    account: Account | None, at: datetime, recorded: Iterable[tuple[datetime, datetime]] = ()
) -> tuple[datetime, datetime]:
    """The billing period an event at `at` counts in.

    Inside or after the account's current period: that period (rolled forward like
    `usage_period`, so daemon and sidecars agree). Before it (a late event): the recorded
    period that contains it, else the calendar month (the default tier's period).
    """
    start = account.current_period_start if account is not None else None
    if start is not None and at >= start:
        return usage_period(account, at)
    for begin, end in recorded:
        if begin <= at < end:
            return begin, end
    return usage_period(None, at)


def aggregate(values: Iterable[tuple[tuple[str, str, str], Amount]]) -> dict[tuple[str, str, str], Amount]:
    """Sum deltas per counter key (tenant, code, period_start), exactly."""
    totals: dict[tuple[str, str, str], Amount] = {}
    for key, value in values:
        totals[key] = add(totals.get(key, 0), value)
    return totals
