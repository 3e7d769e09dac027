"""The plans catalog (plans/plans.yaml): schema, loading, validation and the policy's data view."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from tiergate.errors import CatalogError
from tiergate.periods import Window, window_bounds

Interval = Literal["day", "week", "month", "year"]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Strict):
    """How usage events with this code add up: `count` and `sum` within a billing period; `latest`
    is a gauge (seats in use): the value of the newest event by timestamp, never reset."""

    aggregation: Literal["count", "sum", "latest"]
    field: str | None = None
    # The Stripe Billing Meter's `event_name` this metric's events go to (the Stripe meter sink);
    # `tiergate plans push` creates the meter when Stripe has none with that name.
    meter: (
        Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")] | None
    ) = None
    # Fractions of a tenant's limit that send `usage.threshold_crossed` (outbound webhooks), once
    # per tenant, metric, period and threshold: [0.8, 1.0] warns at 80 % and at the limit.
    alerts: list[Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=list)
    # `local`: each sidecar decides from its own view (exact per pod). `leased`: the daemon leases
    # slices of what is left to the sidecars, so reserves are exact across pods (docs/adr/0045).
    enforcement: Literal["local", "leased"] = "local"
    # A calendar window shorter than the billing period (in the catalog's `timezone`): the counter,
    # the limit and the answer's valid_until follow it instead of the period (docs/adr/0047).
    window: Window | None = None

    @model_validator(mode="after")
    def _leased_adds_up(self) -> Metric:
        for name, value in (("enforcement 'leased'", self.enforcement == "leased"), ("window", self.window)):
            if value and self.aggregation == "latest":
                raise ValueError(f"{name} needs a metric that adds up (count or sum), not a gauge")
        return self

    @model_validator(mode="after")
    def _sum_needs_field(self) -> Metric:
        if self.aggregation == "sum" and not self.field:
            raise ValueError("aggregation 'sum' needs 'field', the event property to add up")
        if self.aggregation == "latest" and not self.field:
            raise ValueError(
                "aggregation 'latest' needs 'field', the event property holding the current value"
            )
        if self.aggregation == "count" and self.field:
            raise ValueError("aggregation 'count' takes no 'field'")
        return self


class Quota(_Strict):
    """`{limit: N}` allows N per billing period; `{}` is on and unlimited.

    `limit_by: quantity` makes the limit what the customer bought: the subscription's quantity
    (seats), capped by `limit` when both are given; a tenant without a subscription gets `limit`.
    """

    limit: Annotated[int, Field(ge=0)] | None = None
    limit_by: Literal["quantity"] | None = None


def _feature_value(value: object) -> object:
    # One clear message instead of pydantic's per-union-member errors.
    if isinstance(value, bool | Quota):
        return value
    if isinstance(value, dict):
        return Quota.model_validate(value)
    raise ValueError(f"a feature is true, false, {{limit: N}} or {{}}; got {value!r}")


FeatureValue = Annotated[bool | Quota, BeforeValidator(_feature_value)]


Currency = Annotated[str, Field(pattern=r"^[a-z]{3}$")]


class Price(_Strict):
    lookup_key: Annotated[str, Field(min_length=1, max_length=200)]
    unit_amount: Annotated[int, Field(ge=0)]  # integer minor units (cents): never floats for money
    currency: Currency
    # The same price in other currencies (Stripe's `currency_options`): currency -> unit amount.
    currency_options: dict[Currency, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)

    @property
    def currencies(self) -> list[str]:
        return sorted({self.currency, *self.currency_options})


class CheckoutOptions(_Strict):
    """Defaults for every Checkout Session; a request may change each of them."""

    allow_promotion_codes: bool = False
    automatic_tax: bool = False
    tax_id_collection: bool = False
    billing_address_collection: Literal["auto", "required"] | None = None


class Tier(_Strict):
    rank: int
    name: str | None = None
    prices: dict[Interval, Price] = Field(default_factory=dict)
    trial_days: Annotated[int, Field(ge=0)] = 0
    grace_days: Annotated[int, Field(ge=0)] = 0
    features: dict[Identifier, FeatureValue] = Field(default_factory=dict)


class AddonLimit(_Strict):
    """What one unit of an add-on adds to a feature's limit (times the item's quantity)."""

    add_limit: Annotated[int, Field(ge=1)]


def _addon_effect(value: object) -> object:
    if value is True or isinstance(value, AddonLimit):
        return value
    if isinstance(value, dict):
        return AddonLimit.model_validate(value)
    raise ValueError(f"an add-on's feature is true (turns it on) or {{add_limit: N}}; got {value!r}")


AddonEffect = Annotated[bool | AddonLimit, BeforeValidator(_addon_effect)]


class Addon(_Strict):
    """A Stripe price bought as an extra subscription item, changing features on top of the tier."""

    name: str | None = None
    prices: dict[Interval, Price]
    features: dict[Identifier, AddonEffect]


class Route(_Strict):
    """An ingress rule: requests matching method and glob path need `feature` and consume `usage`."""

    method: Annotated[str, Field(pattern=r"^(\*|[A-Z]+)$")] = "*"
    path: Annotated[str, Field(pattern=r"^/")]
    feature: Identifier | None = None
    usage: Identifier | None = None

    @model_validator(mode="after")
    def _gates_something(self) -> Route:
        if self.feature is None and self.usage is None:
            raise ValueError("a route needs 'feature', 'usage' or both")
        return self


class Ingress(_Strict):
    unmatched: Literal["allow", "deny"] = "allow"


def _zone(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"timezone is an IANA name like 'Europe/Paris'; got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (like 'UTC' or 'Europe/Paris')") from None
    return value


class Catalog(_Strict):
    default_tier: Identifier
    # The time zone metrics' calendar windows (`window: day`) are counted in.
    timezone: Annotated[str, BeforeValidator(_zone)] = "UTC"
    metrics: dict[Identifier, Metric] = Field(default_factory=dict)
    tiers: dict[Identifier, Tier]
    addons: dict[Identifier, Addon] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    ingress: Ingress = Field(default_factory=Ingress)
    checkout: CheckoutOptions = Field(default_factory=CheckoutOptions)

    def usage_window(self, code: str, moment: datetime) -> tuple[datetime, datetime] | None:
        """The window of `code`'s counter holding `moment`; None: it counts per billing period."""
        metric = self.metrics.get(code)
        if metric is None or metric.window is None:
            return None
        return window_bounds(moment, metric.window, ZoneInfo(self.timezone))

    @property
    def features(self) -> set[str]:
        return {name for tier in self.tiers.values() for name in tier.features}

    def tier_for_lookup_key(self, key: str) -> tuple[str, Interval] | None:
        for tier_name, tier in self.tiers.items():
            for interval, price in tier.prices.items():
                if price.lookup_key == key:
                    return tier_name, interval
        return None

    def addon_for_lookup_key(self, key: str) -> str | None:
        for name, addon in self.addons.items():
            if any(price.lookup_key == key for price in addon.prices.values()):
                return name
        return None

    def policy_data(self) -> dict[str, Any]:
        """The catalog as the policies see it under `data.plans` (`{}` stays `{}`: unlimited)."""
        return self.model_dump(mode="json", exclude_none=True)


def _cross_field_problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems between fields, read from the raw document so that they are reported together
    with the schema's (every problem in one run); parts of the wrong shape are skipped here, the
    schema names them."""
    tiers = _mapping(raw.get("tiers"))
    problems: list[tuple[str, str]] = []
    default = raw.get("default_tier")
    if isinstance(default, str) and default not in tiers:
        problems.append(("default_tier", f"{default!r} is not one of the tiers"))
    meters: dict[str, str] = {}
    for code, metric in _mapping(raw.get("metrics")).items():
        meter = _mapping(metric).get("meter")
        if isinstance(meter, str) and meter in meters:
            problems.append((f"metrics.{code}.meter", f"{meter!r} is also the meter of {meters[meter]!r}"))
        elif isinstance(meter, str):
            meters[meter] = code
    seen_ranks: dict[int, str] = {}
    seen_keys: dict[str, str] = {}
    for name, tier in tiers.items():
        rank = _mapping(tier).get("rank")
        if isinstance(rank, int) and rank in seen_ranks:
            problems.append((f"tiers.{name}.rank", f"{rank} is also the rank of {seen_ranks[rank]!r}"))
        if isinstance(rank, int):
            seen_ranks.setdefault(rank, name)
        for interval, price in _mapping(_mapping(tier).get("prices")).items():
            problems += _price_problems(_mapping(price), f"tiers.{name}.prices.{interval}", seen_keys)
    features = {f for tier in tiers.values() for f in _mapping(_mapping(tier).get("features"))}
    for name, addon in _mapping(raw.get("addons")).items():
        for interval, price in _mapping(_mapping(addon).get("prices")).items():
            problems += _price_problems(_mapping(price), f"addons.{name}.prices.{interval}", seen_keys)
        for changed in _mapping(_mapping(addon).get("features")):
            if changed not in features:
                problems.append(
                    (f"addons.{name}.features.{changed}", f"{changed!r} is in no tier's features")
                )
    metrics = _mapping(raw.get("metrics"))
    routes = raw.get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        feature, usage = _mapping(route).get("feature"), _mapping(route).get("usage")
        if isinstance(feature, str) and feature not in features:
            problems.append((f"routes[{i}].feature", f"{feature!r} is in no tier's features"))
        if isinstance(usage, str) and usage not in metrics:
            problems.append((f"routes[{i}].usage", f"{usage!r} is not a metric (known: {sorted(metrics)})"))
        elif isinstance(usage, str) and _mapping(metrics[usage]).get("aggregation") == "latest":
            problems.append(
                (f"routes[{i}].usage", f"{usage!r} is a gauge (latest): a request cannot add to it")
            )
    return problems


def _price_problems(price: Mapping[str, Any], where: str, seen_keys: dict[str, str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    key, currency = price.get("lookup_key"), price.get("currency")
    if isinstance(key, str) and key in seen_keys:
        problems.append((f"{where}.lookup_key", f"{key!r} is also used by {seen_keys[key]}"))
    if isinstance(key, str):
        seen_keys.setdefault(key, f"{where}.lookup_key")
    if isinstance(currency, str) and currency in _mapping(price.get("currency_options")):
        problems.append(
            (f"{where}.currency_options.{currency}", f"{currency!r} is already the price's own currency")
        )
    return problems


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_catalog(text: str, source: str = "plans.yaml") -> Catalog:
    """Parse and validate; raises CatalogError listing every problem with its field path."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source} is not valid YAML: {exc}", [("", str(exc))]) from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"{source} must be a mapping", [("", "expected a mapping at the top")])
    problems = _cross_field_problems(raw)
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        schema = [(_dotted(err["loc"]), _plain(err["msg"])) for err in exc.errors()]
        raise _invalid(source, schema + problems) from None
    if problems:
        raise _invalid(source, problems)
    return catalog


def _invalid(source: str, problems: list[tuple[str, str]]) -> CatalogError:
    listing = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in problems)
    return CatalogError(f"{source} is invalid: {listing}", problems)


def load_catalog(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        message = f"cannot read catalog {path}: {exc.strerror}"
        raise CatalogError(message, [("", message)]) from exc
    return parse_catalog(text, str(path))


def _dotted(loc: tuple[int | str, ...]) -> str:
    # pydantic reports union members ("bool", "Quota") as path parts: they are not fields.
    parts = [p for p in loc if p not in ("bool", "Quota", "AddonLimit", "[key]")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(msg: str) -> str:
    return msg.removeprefix("Value error, ")
