"""Plan grants' cycles (pure): which cycle of a tier's grant `now` is in.

`every: period` is the billing period (the calendar month on the default tier); `every: month`
cuts the period into months from its start, so an annual plan grants monthly. A month from the
31st ends on the last day of a shorter month (Stripe's own rule for billing anchors), and the
last month of a period ends with the period.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from typing import Literal


def add_months(start: datetime, months: int) -> datetime:
    """`start` moved by whole months, its day clamped to the target month's last day."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def cycle(
    every: Literal["month", "period"], period: tuple[datetime, datetime], now: datetime
) -> tuple[datetime, datetime]:
    """The cycle of `now` inside `period` (start inclusive, end exclusive)."""
    start, end = period
    if every == "period":
        return start, end
    months = (now.year - start.year) * 12 + now.month - start.month
    months = max(0, months - 1)
    while add_months(start, months + 1) <= now:
        months += 1
    begins = add_months(start, months)
    return begins, min(add_months(start, months + 1), end)
