"""Plan grants' cycles (pure): months inside a period, clamped month ends, the period's own end."""

from __future__ import annotations

from datetime import UTC, datetime

from tiergate.sync_daemon.credits.cycles import add_months, cycle


def at(month: int, day: int, year: int = 2026) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def test_months_from_the_31st_end_on_the_last_day_of_shorter_months() -> None:
    assert add_months(at(1, 31), 1) == at(2, 28)
    assert add_months(at(1, 31), 2) == at(3, 31)
    assert add_months(at(1, 31, 2028), 1) == at(2, 29, 2028)
    assert add_months(at(11, 30), 3) == at(2, 28, 2027)


def test_a_monthly_grant_inside_an_annual_period() -> None:
    year = (at(1, 15), at(1, 15, 2027))
    assert cycle("month", year, at(1, 15)) == (at(1, 15), at(2, 15))
    assert cycle("month", year, at(2, 14)) == (at(1, 15), at(2, 15))
    assert cycle("month", year, at(2, 15)) == (at(2, 15), at(3, 15))
    assert cycle("month", year, at(12, 31)) == (at(12, 15), at(1, 15, 2027))
    assert cycle("period", year, at(7, 1)) == year


def test_the_last_month_ends_with_a_period_shorter_than_it() -> None:
    odd = (at(1, 10), at(3, 1))  # a period of ~7 weeks (e.g. a changed billing anchor)
    assert cycle("month", odd, at(2, 20)) == (at(2, 10), at(3, 1))
