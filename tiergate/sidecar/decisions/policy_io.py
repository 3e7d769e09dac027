"""Pure decision logic: the policy's input document, and the decision built from its answer."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tiergate.amounts import Amount, policy_units
from tiergate.models import ENDED_STATUSES, PolicyAnswer
from tiergate.periods import calendar_month, rfc3339, usage_period
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


@functools.cache
def _calendar_month_text(year: int, month: int) -> tuple[str, str]:
    start, end = calendar_month(datetime(year, month, 1, tzinfo=UTC))
    return rfc3339(start) or "", rfc3339(end) or ""


def account_document(row: AccountRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "tier": row.tier,
        "status": row.status,
        "quantity": row.quantity,
        "current_period_start": row.current_period_start,
        "current_period_end": row.current_period_end,
        "trial_end": row.trial_end,
        "cancel_at_period_end": bool(row.cancel_at_period_end),
        "past_due_since": row.past_due_since,
        "addons": json.loads(row.addons) if row.addons else {},
    }


def build_input(
    *,
    tenant: str,
    feature: str,
    quantity: int,
    now_text: str,
    account: dict[str, Any] | None,
    usage: Mapping[str, Amount],
    period: tuple[str, str],
    replica_age_s: float | None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The input document of policies/entitlements.rego (see docs/policies.md)."""
    return {
        "tenant": tenant,
        "feature": feature,
        "quantity": quantity,
        "now": now_text,
        "account": account,
        # Whole units, never below zero (a correction may run ahead of the usage it corrects), a
        # fraction rounded up: exact against whole limits and quantities (tiergate/amounts.py).
        "usage": {code: policy_units(value) for code, value in usage.items()},
        "period": {"start": period[0], "end": period[1]},
        "replica": {"age_seconds": replica_age_s},
        # The tenant's overrides, expired ones included: the policy says what applies (expires_at).
        "overrides": overrides or {},
    }


_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class PolicyAnswerError(ValueError):
    """The policy returned something that is not a decision document."""


def parse_answer(answer: object) -> PolicyAnswer:
    """Check the policy's `decision` document and normalise it; raises PolicyAnswerError."""
    if not isinstance(answer, dict):
        raise PolicyAnswerError(f"decision must be an object, got {type(answer).__name__}")
    allow = answer.get("allow")
    reason = answer.get("reason")
    if not isinstance(allow, bool):
        raise PolicyAnswerError(f"decision.allow must be a boolean, got {allow!r}")
    if not isinstance(reason, str) or not reason:
        raise PolicyAnswerError(f"decision.reason must be a non-empty string, got {reason!r}")
    limit = answer.get("limit")
    remaining = answer.get("remaining")
    used = answer.get("used", 0)
    tier = answer.get("tier")
    return PolicyAnswer(
        allow=allow,
        reason=reason,
        tier=tier if isinstance(tier, str) else None,
        limit=limit if isinstance(limit, int) else None,
        used=used if isinstance(used, int) else 0,
        remaining=remaining if isinstance(remaining, int) else None,
        valid_until=_time_or_none(answer.get("valid_until")),
    )


def used_bound(answer: object) -> int | None:
    """The decision's `used_bound`: its answer holds while the feature's own counter stays at or
    below it (None when the policy does not say; docs/policies.md)."""
    bound = answer.get("used_bound") if isinstance(answer, dict) else None
    return bound if isinstance(bound, int) and not isinstance(bound, bool) else None


def _time_or_none(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    # The shipped policy already writes the canonical form: re-formatting it would cost ~5 µs.
    return value if _CANONICAL.fullmatch(value) else rfc3339(moment)


def policy_error_decision(tier: str | None) -> PolicyAnswer:
    """What callers get when the policy cannot answer: a deny, never an error."""
    return PolicyAnswer(allow=False, reason="policy_error", tier=tier)


def expiry_epoch(valid_until: str | None) -> float | None:
    if valid_until is None:
        return None
    moment = datetime.fromisoformat(valid_until)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
