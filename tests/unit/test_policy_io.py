"""The policy's input document and the reading of its answer (tiergate.sidecar.decisions.policy_io), pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tiergate.models import PolicyAnswer
from tiergate.policy.document import (
    POLICY_ACCOUNT_FIELDS,
    USED_CEILING,
    PolicyAnswerError,
    build_input,
    parse_answer,
    policy_account,
    policy_error_decision,
    used_range,
)
from tiergate.sidecar.decisions.policy_io import account_document, expiry_epoch, period_for
from tiergate.sidecar.replica.store import AccountRow

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
NOW_TEXT = "2026-11-24T10:00:00Z"


def row(
    status: str = "active", start: str | None = "2026-11-10T00:00:00Z", end: str | None = None
) -> AccountRow:
    return AccountRow(
        tenant="acme",
        tier="pro",
        status=status,
        quantity=5,
        current_period_start=start,
        current_period_end=end if end is not None or start is None else "2026-12-10T00:00:00Z",
        trial_end=None,
        cancel_at_period_end=1,
        past_due_since=None,
        version=3,
        pending_tier="starter",
        pending_interval="month",
        pending_at="2026-12-10T00:00:00Z",
        subscription_id="sub_1",
        addons='{"extra_storage":2}',
    )


def test_account_document_is_what_the_policy_reads_and_nothing_more() -> None:
    assert account_document(row()) == {
        "tier": "pro",
        "status": "active",
        "quantity": 5,
        "current_period_start": "2026-11-10T00:00:00Z",
        "current_period_end": "2026-12-10T00:00:00Z",
        "trial_end": None,
        "cancel_at_period_end": True,  # stored 0/1, a boolean for the policy
        "past_due_since": None,
        "addons": {"extra_storage": 2},  # stored as JSON text, an object for the policy
    }
    assert account_document(row()._replace(addons=None))["addons"] == {}  # type: ignore[index]  # a row gives a document
    assert account_document(None) is None


def test_the_sidecar_and_the_daemon_give_the_policy_the_same_account() -> None:
    """A replica row and the mirror's feed document of the same account: one view (the core's)."""
    stored = row()
    feed = stored.to_account().model_dump(mode="json")
    from_row, from_feed = policy_account(stored), policy_account(feed)
    assert from_row == from_feed
    assert from_row is not None and tuple(from_row) == POLICY_ACCOUNT_FIELDS  # the documented order
    assert policy_account({**feed, "addons": {}}) == {**from_row, "addons": {}}


def test_build_input_has_the_documented_shape_and_copies_usage() -> None:
    usage = {"api_calls": 7}
    document = build_input(
        tenant="acme",
        feature="api_calls",
        quantity=3,
        now_text=NOW_TEXT,
        account=None,
        usage=usage,
        period=("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        replica_age_s=0.5,
    )
    assert document == {
        "tenant": "acme",
        "feature": "api_calls",
        "quantity": 3,
        "now": NOW_TEXT,
        "account": None,
        "usage": {"api_calls": 7},
        "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
        "replica": {"age_seconds": 0.5},
        "overrides": {},
        "license": None,
    }
    document["usage"]["api_calls"] = 8
    assert usage == {"api_calls": 7}, "the policy's input must not alias the caller's counters"


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        (None, ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")),  # default tier: calendar month
        (row(), ("2026-11-10T00:00:00Z", "2026-12-10T00:00:00Z")),  # inside its period: as stored
        (row("canceled"), ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")),  # ended: calendar month
        (row("incomplete_expired"), ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")),
        (row(start=None), ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")),  # no period stored
        (  # the renewal has not arrived: the period rolls forward by its own length
            row(start="2026-10-17T00:00:00Z", end="2026-11-17T00:00:00Z"),
            ("2026-11-17T00:00:00Z", "2026-12-18T00:00:00Z"),
        ),
        (  # not started yet: calendar month
            row(start="2026-12-01T00:00:00Z", end="2027-01-01T00:00:00Z"),
            ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ),
    ],
)
def test_period_for(account: AccountRow | None, expected: tuple[str, str]) -> None:
    assert period_for(account, NOW, NOW_TEXT) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            {"allow": True, "reason": "ok", "tier": "pro", "limit": 100, "used": 7, "remaining": 93},
            PolicyAnswer(True, "ok", "pro", 100, 7, 93, None),
        ),
        (  # valid_until normalised to UTC with a Z, whatever offset the policy wrote
            {
                "allow": False,
                "reason": "limit_exceeded",
                "tier": "free",
                "valid_until": "2026-12-01T01:00:00+01:00",
            },
            PolicyAnswer(False, "limit_exceeded", "free", None, 0, None, "2026-12-01T00:00:00Z"),
        ),
        (  # a canonical-looking instant that is not one is no instant
            {"allow": True, "reason": "ok", "tier": "pro", "valid_until": "2026-13-01T00:00:00Z"},
            PolicyAnswer(True, "ok", "pro", None, 0, None, None),
        ),
        (  # ill-typed optional fields fall back to their defaults instead of failing the decision
            {"allow": True, "reason": "ok", "tier": 3, "limit": "10", "used": None, "valid_until": "soon"},
            PolicyAnswer(True, "ok", None, None, 0, None, None),
        ),
    ],
)
def test_parse_answer(answer: dict[str, Any], expected: PolicyAnswer) -> None:
    assert parse_answer(answer) == expected


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "must be an object, got NoneType"),
        ([], "must be an object, got list"),
        ({"reason": "ok"}, "decision.allow must be a boolean, got None"),
        ({"allow": "yes", "reason": "ok"}, "decision.allow must be a boolean"),
        ({"allow": True}, "decision.reason must be a non-empty string, got None"),
        ({"allow": True, "reason": ""}, "decision.reason must be a non-empty string"),
    ],
)
def test_parse_answer_refuses_what_is_not_a_decision(answer: object, message: str) -> None:
    with pytest.raises(PolicyAnswerError, match=message):
        parse_answer(answer)


def test_policy_error_is_a_deny_keeping_the_tier() -> None:
    assert policy_error_decision("pro") == PolicyAnswer(
        False, "policy_error", "pro", None, 0, None, None, "pro"
    )


def test_parse_answer_keeps_the_paid_tier_beside_the_applied_one() -> None:
    answer = parse_answer({"allow": False, "reason": "payment_overdue", "tier": "free", "paid_tier": "pro"})
    assert (answer.tier, answer.paid_tier) == ("free", "pro")
    assert parse_answer({"allow": True, "reason": "ok", "tier": "free", "paid_tier": 7}).paid_tier is None


@pytest.mark.parametrize(
    ("valid_until", "expected"),
    [
        (None, None),
        ("2026-12-01T00:00:00Z", datetime(2026, 12, 1, tzinfo=UTC).timestamp()),
        ("2026-12-01T00:00:00", datetime(2026, 12, 1, tzinfo=UTC).timestamp()),  # naive: UTC
    ],
)
def test_expiry_epoch(valid_until: str | None, expected: float | None) -> None:
    assert expiry_epoch(valid_until) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"allow": True, "used_bound": 95}, (0, 95)),
        ({"allow": False, "used_floor": 96}, (96, USED_CEILING)),
        ({"used_floor": 3, "used_bound": 7}, (3, 7)),
        ({"allow": True}, None),  # says nothing: today's behaviour
        ({"used_bound": -1}, None),
        ({"used_bound": True}, None),
        ({"used_bound": 1.5}, None),
        ({"used_floor": 8, "used_bound": 7}, None),
        ({"used_bound": 2**63}, None),
        ([1], None),
    ],
)
def test_used_range_is_whole_numbers_or_nothing(answer: object, expected: tuple[int, int] | None) -> None:
    assert used_range(answer) == expected
