"""Calendar windows shorter than the billing period (tiergate/periods.py window_bounds, the catalog's
`window:` and `timezone:`): pure arithmetic, DST included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tiergate.catalog import parse_catalog
from tiergate.errors import CatalogError
from tiergate.periods import Window, window_bounds

PLANS = (Path(__file__).parents[2] / "plans" / "plans.yaml").read_text(encoding="utf-8")
PARIS = ZoneInfo("Europe/Paris")
KOLKATA = ZoneInfo("Asia/Kolkata")  # +05:30: an hour there does not start on a UTC hour


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("moment", "window", "zone", "start", "end"),
    [
        ("2026-12-08T10:15:42Z", "minute", UTC, "2026-12-08T10:15:00Z", "2026-12-08T10:16:00Z"),
        ("2026-12-08T10:15:42Z", "hour", KOLKATA, "2026-12-08T09:30:00Z", "2026-12-08T10:30:00Z"),
        ("2026-12-08T23:30:00Z", "day", PARIS, "2026-12-08T23:00:00Z", "2026-12-09T23:00:00Z"),
        ("2026-03-29T12:00:00Z", "day", PARIS, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),  # 23 h
        ("2026-10-25T12:00:00Z", "day", PARIS, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),  # 25 h
        ("2026-12-31T23:30:00Z", "month", PARIS, "2026-12-31T23:00:00Z", "2027-01-31T23:00:00Z"),
        ("2026-12-15T00:00:00Z", "month", UTC, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ],
)
def test_window_bounds(moment: str, window: Window, zone: ZoneInfo, start: str, end: str) -> None:
    assert window_bounds(at(moment), window, zone) == (at(start), at(end))


def test_the_catalog_gives_a_metric_its_window_in_its_time_zone() -> None:
    text = "timezone: Europe/Paris\n" + PLANS.replace(
        "exports: {aggregation: count, alerts: [0.8, 1.0]}", "exports: {aggregation: count, window: day}"
    )
    catalog = parse_catalog(text)
    assert catalog.usage_window("exports", at("2026-12-08T23:30:00Z")) == (
        at("2026-12-08T23:00:00Z"),
        at("2026-12-09T23:00:00Z"),
    )
    assert catalog.usage_window("api_calls", at("2026-12-08T23:30:00Z")) is None  # per billing period


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("timezone: Mars/Olympus\n" + PLANS, "timezone"),
        (PLANS.replace("seats: {aggregation: latest, field: seats}", "seats: {aggregation: latest, field: seats, window: day}"), "metrics.seats"),
        (PLANS.replace("seats: {aggregation: latest, field: seats}", "seats: {aggregation: latest, field: seats, enforcement: leased}"), "metrics.seats"),
        (PLANS.replace("exports: {aggregation: count, alerts: [0.8, 1.0]}", "exports: {aggregation: count, window: week}"), "metrics.exports.window"),
    ],
)  # fmt: skip
def test_bad_windows_and_zones_are_named(text: str, field: str) -> None:
    with pytest.raises(CatalogError) as raised:
        parse_catalog(text)
    assert field in [path for path, _ in raised.value.problems]
