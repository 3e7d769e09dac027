"""The sidecar's side of the policy input: the usage period and account document from a replica row."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from tiergate.catalog import Catalog
from tiergate.models import ENDED_STATUSES
from tiergate.periods import calendar_month, rfc3339, usage_period
from tiergate.policy.document import policy_account
from tiergate.sidecar.replica.store import AccountRow


def period_for(row: AccountRow | None, now: datetime, now_text: str) -> tuple[str, str]:
    """The usage period as RFC 3339 strings; the common cases need no parsing at all."""
    if (
        row is None
        or row.status in ENDED_STATUSES
        or row.current_period_start is None
        or row.current_period_end is None
    ):
        utc = now.astimezone(UTC)
        return _calendar_month_text(utc.year, utc.month)
    if row.current_period_start <= now_text < row.current_period_end:
        return row.current_period_start, row.current_period_end
    start, end = usage_period(row.to_account(), now)  # ended (roll forward) or not started yet
    return rfc3339(start) or "", rfc3339(end) or ""


def window_for(catalog: Catalog | None, code: str, now: datetime) -> tuple[str, str] | None:
    """A metric's own window (`window:` in the catalog) holding `now`; None: the billing period."""
    window = catalog.usage_window(code, now) if catalog is not None else None
    return None if window is None else (rfc3339(window[0]) or "", rfc3339(window[1]) or "")


@functools.cache
def _calendar_month_text(year: int, month: int) -> tuple[str, str]:
    start, end = calendar_month(datetime(year, month, 1, tzinfo=UTC))
    return rfc3339(start) or "", rfc3339(end) or ""


# The sidecar's rows are one of the shapes the core's conversion reads (tiergate/policy/document.py).
account_document = policy_account


def expiry_epoch(valid_until: str | None) -> float | None:
    if valid_until is None:
        return None
    moment = datetime.fromisoformat(valid_until)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
