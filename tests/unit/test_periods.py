"""Billing-period arithmetic: subscription periods, roll-forward, and the calendar month."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tiergate.models import Account
from tiergate.periods import calendar_month, parse_rfc3339, rfc3339, usage_period


def at(text: str) -> datetime:
    moment = parse_rfc3339(text)
    assert moment is not None
    return moment


def account(status: str = "active", start: str | None = None, end: str | None = None) -> Account:
    return Account.model_validate(
        {
            "tenant": "t",
            "tier": "pro",
            "status": status,
            "current_period_start": start,
            "current_period_end": end,
        }
    )


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        ("2026-11-24T10:00:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("2026-02-10T00:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
    ],
)
def test_calendar_month(now: str, start: str, end: str) -> None:
    assert tuple(rfc3339(m) for m in calendar_month(at(now))) == (start, end)


def test_subscription_period_is_used_while_current() -> None:
    acc = account(start="2026-11-15T08:00:00Z", end="2026-12-15T08:00:00Z")
    start, end = usage_period(acc, at("2026-11-24T00:00:00Z"))
    assert (rfc3339(start), rfc3339(end)) == ("2026-11-15T08:00:00Z", "2026-12-15T08:00:00Z")


def test_ended_period_rolls_forward_by_its_length() -> None:
    acc = account(start="2026-11-01T00:00:00Z", end="2026-11-11T00:00:00Z")
    start, end = usage_period(acc, at("2026-11-24T00:00:00Z"))
    assert (rfc3339(start), rfc3339(end)) == ("2026-11-21T00:00:00Z", "2026-12-01T00:00:00Z")


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_default_tier_accounts_use_the_calendar_month(status: str) -> None:
    acc = account(status, start="2026-11-15T08:00:00Z", end="2026-12-15T08:00:00Z")
    start, _ = usage_period(acc, at("2026-11-24T00:00:00Z"))
    assert rfc3339(start) == "2026-11-01T00:00:00Z"


def test_no_account_uses_the_calendar_month() -> None:
    assert rfc3339(usage_period(None, datetime(2026, 3, 5, tzinfo=UTC))[0]) == "2026-03-01T00:00:00Z"


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_rfc3339("2026-01-01T00:00:00")
