"""Usage events (pure): validation against the catalog's metrics, timestamps, period assignment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tiergate.models import Account
from tiergate.usage_events import EventError, ValidEvent, aggregate, event_period, parse_event

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
METRICS: dict[str, Any] = {
    "api_calls": {"aggregation": "count"},
    "storage_gb": {"aggregation": "sum", "field": "gb"},
}


def event(**fields: Any) -> dict[str, Any]:
    return {"transaction_id": "tx_1", "external_customer_id": "t_1", "code": "api_calls", **fields}


def nested(depth: int) -> dict[str, Any]:
    """`properties` whose objects nest `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_properties_at_the_limits_are_accepted() -> None:
    deep = parse_event(event(properties=nested(32)), METRICS, NOW)
    wide = parse_event(event(properties={"blob": "x" * 4000}), METRICS, NOW)
    assert deep.properties == nested(32) and len(wide.properties["blob"]) == 4000


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"external_customer_id": "t", "code": "api_calls"}, "transaction_id"),
        (event(code=None), "code"),
        (event(code="nope"), "code"),
        (event(external_customer_id=None), "external_customer_id"),
        (event(external_customer_id=None, external_subscription_id="sub_1"), "external_customer_id"),
        (event(transaction_id=""), "transaction_id"),
        (event(transaction_id="x" * 256), "transaction_id"),
        (event(code="storage_gb"), "properties.gb"),
        (event(code="storage_gb", properties={"gb": "1.1234567"}), "properties.gb"),  # scale 7
        (event(code="storage_gb", properties={"gb": Decimal("0.0000001")}), "properties.gb"),
        (event(code="storage_gb", properties={"gb": "1000000000.5"}), "properties.gb"),
        (event(code="storage_gb", properties={"gb": "Infinity"}), "properties.gb"),
        (event(code="storage_gb", properties={"gb": -2e9}), "properties.gb"),
        (event(code="storage_gb", properties={"gb": "1e400000000"}), "properties.gb"),
        (event(transaction_id="   "), "transaction_id"),
        (event(external_customer_id=" "), "external_customer_id"),
        (event(precise_total_amount_cents="lots"), "precise_total_amount_cents"),
        (event(precise_total_amount_cents=1.5), "precise_total_amount_cents"),
        (event(code="storage_gb", properties={"gb": "many"}), "properties.gb"),
        (event(code="storage_gb", properties={"gb": True}), "properties.gb"),
        (event(code="storage_gb", properties={"gb": float("nan")}), "properties.gb"),
        (event(properties=[1]), "properties"),
        (event(properties=nested(33)), "properties"),
        (event(properties=nested(980)), "properties"),
        (event(properties={"blob": "x" * 4100}), "properties"),
        (event(timestamp="2026-03-15T10:00:00"), "timestamp"),
        (event(timestamp="yesterday"), "timestamp"),
        (event(timestamp=(NOW + timedelta(days=2)).timestamp()), "timestamp"),
        (event(timestamp=1e20), "timestamp"),
        (event(timestamp=-5), "timestamp"),
        ("not an object", "event"),
    ],
)
def test_bad_events_name_their_field(raw: object, field: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw, METRICS, NOW)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("fields", "value", "at"),
    [
        ({}, 1, NOW),
        ({"timestamp": 1773561600}, 1, datetime(2026, 3, 15, 8, 0, tzinfo=UTC)),
        ({"timestamp": "1773561600.5"}, 1, datetime(2026, 3, 15, 8, 0, 0, 500000, tzinfo=UTC)),
        ({"timestamp": "2026-03-01T00:00:00Z"}, 1, datetime(2026, 3, 1, tzinfo=UTC)),
        ({"code": "storage_gb", "properties": {"gb": 3}}, 3, NOW),
        ({"code": "storage_gb", "properties": {"gb": "7"}}, 7, NOW),
        ({"code": "storage_gb", "properties": {"gb": 2.0}}, 2, NOW),
        ({"lago_extra_key": 1, "external_subscription_id": "sub_9"}, 1, NOW),
        ({"code": "storage_gb", "properties": {"gb": -4}}, -4, NOW),  # a correction
        ({"code": "storage_gb", "properties": {"gb": "-4"}}, -4, NOW),
        ({"code": "storage_gb", "properties": {"gb": "12.5"}}, Decimal("12.5"), NOW),  # Lago's decimals
        ({"code": "storage_gb", "properties": {"gb": Decimal("0.1")}}, Decimal("0.1"), NOW),  # a JSON number
        ({"code": "storage_gb", "properties": {"gb": 1.5}}, Decimal("1.5"), NOW),
        ({"code": "storage_gb", "properties": {"gb": "-2.250"}}, Decimal("-2.25"), NOW),
        ({"code": "storage_gb", "properties": {"gb": "999999999.999999"}}, Decimal("999999999.999999"), NOW),
        ({"properties": None}, 1, NOW),  # Lago takes null as {}
    ],
)
def test_valid_events(fields: dict[str, Any], value: int | Decimal, at: datetime) -> None:
    parsed = parse_event(event(**fields), METRICS, NOW)
    assert (parsed.tenant, parsed.value, parsed.at) == ("t_1", value, at)


def test_wire_form_round_trips_with_its_timestamp_fixed() -> None:
    parsed = parse_event(event(properties={"k": "v"}, external_subscription_id="sub_9"), METRICS, NOW)
    again = parse_event(parsed.wire(), METRICS, NOW + timedelta(hours=5))
    assert again == parsed and again.at == NOW and again.external_subscription_id == "sub_9"
    assert again.lago() == parsed.lago()


OWNERS = {"sub_9": "t_1", "sub_other": "t_2"}

# From Lago's API reference (EventInputObject): a subscription id, no customer id.
LAGO_DOC_EVENT: dict[str, Any] = {
    "transaction_id": "transaction_1234567890",
    "external_subscription_id": "sub_9",
    "code": "storage_gb",
    "timestamp": "1773561600.123",
    "precise_total_amount_cents": "1234.56",
    "properties": {"gb": 10, "region": "eu"},
}


def test_a_lago_event_resolves_its_subscription_and_keeps_every_field() -> None:
    parsed = parse_event(LAGO_DOC_EVENT, METRICS, NOW, OWNERS.get)
    assert (parsed.tenant, parsed.value, parsed.transaction_id) == ("t_1", 10, "transaction_1234567890")
    assert parsed.lago() == LAGO_DOC_EVENT  # forwarded exactly as sent
    assert parse_event(parsed.wire(), METRICS, NOW).tenant == "t_1"  # the daemon trusts the sidecar's tenant


@pytest.mark.parametrize(
    ("fields", "tenant"),
    [
        ({"external_customer_id": "t_1"}, "t_1"),  # both, agreeing
        ({"external_subscription_id": "sub_unknown", "external_customer_id": "t_3"}, "t_3"),
        ({"external_subscription_id": None, "external_customer_id": " t_1 "}, " t_1 "),  # kept as sent
    ],
)
def test_customer_and_subscription_ids(fields: dict[str, Any], tenant: str) -> None:
    assert parse_event({**LAGO_DOC_EVENT, **fields}, METRICS, NOW, OWNERS.get).tenant == tenant


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"external_customer_id": "t_2"}, "external_customer_id", "does not own"),
        ({"external_subscription_id": "sub_unknown"}, "external_subscription_id", "sub_unknown"),
        ({"external_subscription_id": None}, "external_customer_id", "required"),
    ],
)
def test_ids_that_disagree_or_resolve_to_nobody(fields: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event({**LAGO_DOC_EVENT, **fields}, METRICS, NOW, OWNERS.get)
    assert caught.value.field == field and words in caught.value.message


def test_an_rfc3339_timestamp_is_forwarded_as_unix_seconds() -> None:
    parsed = parse_event(event(timestamp="2026-03-01T00:00:00Z"), METRICS, NOW)
    assert parsed.lago()["timestamp"] == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert parse_event(event(), METRICS, NOW).lago()["timestamp"] == NOW.timestamp()


P_START = datetime(2026, 3, 10, tzinfo=UTC)
P_END = datetime(2026, 4, 10, tzinfo=UTC)
PRO = Account(tenant="t", tier="pro", status="active", current_period_start=P_START, current_period_end=P_END)
RECORDED = [(datetime(2026, 2, 10, tzinfo=UTC), P_START)]


@pytest.mark.parametrize(
    ("account", "at", "recorded", "expected"),
    [
        (PRO, datetime(2026, 3, 20, tzinfo=UTC), (), (P_START, P_END)),
        # after the period, before the renewal webhook: rolled forward by its length
        (PRO, datetime(2026, 4, 12, tzinfo=UTC), (), (P_END, P_END + (P_END - P_START))),
        # a late event: the recorded period it falls in
        (PRO, datetime(2026, 2, 20, tzinfo=UTC), RECORDED, RECORDED[0]),
        # a late event before any recorded period: the calendar month
        (
            PRO,
            datetime(2026, 1, 20, tzinfo=UTC),
            RECORDED,
            (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
        ),
        # no account: calendar months
        (
            None,
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            (),
            (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ),
        # canceled: the default tier's calendar month
        (
            PRO.model_copy(update={"status": "canceled"}),
            datetime(2026, 3, 20, tzinfo=UTC),
            (),
            (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        ),
    ],
)
def test_event_period(
    account: Account | None,
    at: datetime,
    recorded: list[tuple[datetime, datetime]],
    expected: tuple[datetime, datetime],
) -> None:
    assert event_period(account, at, recorded) == expected


def test_aggregate_sums_per_counter() -> None:
    a, b = ("t", "api_calls", "p1"), ("t", "api_calls", "p2")
    assert aggregate([(a, 1), (b, 2), (a, 3)]) == {a: 4, b: 2}


def test_valid_event_equality_ignores_properties() -> None:
    one = ValidEvent("t", "x", "c", NOW, 1, {"a": 1})
    assert one == ValidEvent("t", "x", "c", NOW, 1, {"b": 2})
