"""Usage events (pure): Lago's event shape, validation against the catalog's metrics, periods.

Both processes use this module: the sidecar validates what the app posts (and assigns the
period it counts the event in locally), the daemon validates again what sidecars deliver and
assigns the authoritative period.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from tiergate.models import MAX_QUANTITY, Account, TenantId
from tiergate.periods import rfc3339, usage_period

MAX_EVENTS = 100  # per POST /v1/usage/batch at the sidecar, like Lago
# Whatever gets a 202 must be deliverable: a bounded event fits any delivery batch and encodes
# without deep recursion (an event nested ~1,000 deep once wedged delivery for every tenant).
MAX_PROPERTIES_BYTES = 4096  # `properties` as compact JSON
MAX_PROPERTIES_DEPTH = 32  # nesting of objects and arrays inside `properties`
MAX_FUTURE = timedelta(days=1)  # clock skew we tolerate on a caller's timestamp
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

Text = Annotated[str, StringConstraints(min_length=1, max_length=255, strip_whitespace=True)]


class UsageEvent(BaseModel):
    """One event as Lago defines it; unknown top-level keys are ignored, as Lago does."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: Text
    external_customer_id: TenantId | None = None
    external_subscription_id: Text | None = None
    code: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    timestamp: int | float | str | None = None  # Unix seconds (Lago) or RFC 3339
    properties: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class ValidEvent:
    """A validated event: whose it is, when it happened, and what it adds to its metric."""

    tenant: str
    transaction_id: str
    code: str
    at: datetime
    value: int
    properties: dict[str, Any] = field(default_factory=dict, compare=False)
    external_subscription_id: str | None = None

    def wire(self) -> dict[str, Any]:
        """The Lago-shaped document delivered to the daemon (the timestamp fixed at acceptance)."""
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


class EventError(ValueError):
    """One event is unacceptable; `field` is its path inside the event (`code`, `properties.gb`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_event(raw: object, metrics: Mapping[str, Any], now: datetime) -> ValidEvent:
    """Validate one raw event against the catalog's `metrics` (its policy-data form); raises EventError."""
    if isinstance(raw, Mapping):
        check_properties(raw.get("properties"))
    try:
        event = UsageEvent.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in err["loc"]) or "event"
        raise EventError(loc, err["msg"]) from None
    if event.external_customer_id is None:
        raise EventError(
            "external_customer_id",
            "required: the tenant the usage belongs to (an external_subscription_id alone "
            "cannot be resolved to a tenant on the sidecar)",
        )
    metric = metrics.get(event.code)
    if not isinstance(metric, Mapping):
        raise EventError("code", f"{event.code!r} is not a metric of the catalog (known: {sorted(metrics)})")
    return ValidEvent(
        tenant=event.external_customer_id,
        transaction_id=event.transaction_id,
        code=event.code,
        at=event_time(event.timestamp, now),
        value=metric_value(metric, event.properties),
        properties=event.properties,
        external_subscription_id=event.external_subscription_id,
    )


def check_properties(properties: object) -> None:
    """Bound `properties` in depth (without recursing) and in encoded size; raises EventError."""
    if properties is None:
        return
    if _depth(properties) > MAX_PROPERTIES_DEPTH:
        raise EventError("properties", f"nests more than the {MAX_PROPERTIES_DEPTH} levels accepted")
    try:
        size = len(json.dumps(properties, separators=(",", ":"), ensure_ascii=False).encode())
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


def metric_value(metric: Mapping[str, Any], properties: Mapping[str, Any]) -> int:
    """What one event adds: 1 for `count`, the integer property `field` for `sum`."""
    if metric.get("aggregation") != "sum":
        return 1
    name = str(metric.get("field"))
    where = f"properties.{name}"
    if name not in properties:
        raise EventError(where, f"required: metric aggregates sum of {name!r}")
    return _whole_number(properties[name], where)


def _whole_number(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise EventError(where, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise EventError(where, f"must be a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise EventError(where, f"must be a whole number (counters are integers), got {value!r}")
    if not 0 <= number <= MAX_QUANTITY:
        raise EventError(where, f"must be between 0 and {MAX_QUANTITY}, got {value!r}")
    return int(number)


def event_time(timestamp: int | float | str | None, now: datetime) -> datetime:
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


def aggregate(values: Iterable[tuple[tuple[str, str, str], int]]) -> dict[tuple[str, str, str], int]:
    """Sum deltas per counter key (tenant, code, period_start)."""
    totals: dict[tuple[str, str, str], int] = {}
    for key, value in values:
        totals[key] = totals.get(key, 0) + value
    return totals
