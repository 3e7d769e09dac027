"""Billing-period arithmetic (pure): which period a usage counter belongs to at a given instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from tiergate.models import ENDED_STATUSES, Account

Window = Literal["minute", "hour", "day", "month"]


def utc_now() -> datetime:
    """The one clock read of wall time in UTC (tests and benchmarks pass their own clocks instead)."""
    return datetime.now(UTC)


def utc_now_text() -> str:
    """`utc_now()` rendered as every timestamp the project writes: RFC 3339, seconds, `Z`."""
    return utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def usage_period(account: Account | None, now: datetime) -> tuple[datetime, datetime]:
    """The subscription's current period, or the calendar month on the default tier.

    An ended subscription (ENDED_STATUSES) has no period of its own: the tenant is on the
    default tier, whose usage resets each calendar month. When the replica still holds a period that has already ended (the renewal has not reached
    us yet), the period rolls forward by its own length so counters reset on time.
    """
    if (
        account is None
        or account.status in ENDED_STATUSES
        or account.current_period_start is None
        or account.current_period_end is None
        or account.current_period_end <= account.current_period_start
    ):
        return calendar_month(now)
    start, end = account.current_period_start, account.current_period_end
    if now < start:
        return calendar_month(now)
    length = end - start
    if now >= end:
        skipped = (now - start) // length
        start = start + skipped * length
        end = start + length
    return start.astimezone(UTC), end.astimezone(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    """UTC with a `Z`, second precision: the form the policies parse."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset; expected RFC 3339 like 2026-01-31T00:00:00Z")
    return moment.astimezone(UTC)


def seconds_until(moment: datetime | None, now: datetime) -> int | None:
    if moment is None:
        return None
    return max(0, int((moment - now) / timedelta(seconds=1)))


def window_bounds(moment: datetime, window: Window, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The calendar window (in `zone`) holding `moment`, as UTC instants: a metric's own window
    shorter than the billing period (`window:` in the catalog, docs/adr/0047)."""
    local = moment.astimezone(zone)
    if window == "minute":
        start = local.replace(second=0, microsecond=0)
        return start.astimezone(UTC), (start + timedelta(minutes=1)).astimezone(UTC)
    if window == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        return start.astimezone(UTC), (start.astimezone(UTC) + timedelta(hours=1))
    day = datetime(local.year, local.month, local.day, tzinfo=zone)
    if window == "day":
        following = day.date() + timedelta(days=1)
        end = datetime(following.year, following.month, following.day, tzinfo=zone)
        return day.astimezone(UTC), end.astimezone(UTC)
    first = day.replace(day=1)
    end = (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
    return first.astimezone(UTC), end.astimezone(UTC)
