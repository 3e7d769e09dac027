"""The Lago sink's pure parts: what it forwards, and how it reads Lago's 422 answer."""

from __future__ import annotations

from typing import Any

import pytest

from tiergate.sync_daemon.sinks.lago import lago_document, read_422
from tiergate.sync_daemon.sinks.store import SinkEvent

SENT = {"transaction_id": "t1", "external_customer_id": "acme", "code": "api_calls", "timestamp": 1.5}


def sink_event(document: dict[str, Any], subscription: str | None = "sub_1") -> SinkEvent:
    return SinkEvent(
        1, "acme", "api_calls", 1, "2026-11-01T00:00:00.000000Z", document, subscription, "cus_1"
    )


@pytest.mark.parametrize(
    ("document", "subscription", "expected"),
    [
        (SENT, "sub_1", {**SENT, "external_subscription_id": "sub_1"}),  # Lago needs one: the tenant's
        (
            {**SENT, "external_subscription_id": "sub_sent"},
            "sub_1",
            {**SENT, "external_subscription_id": "sub_sent"},
        ),
        (SENT, None, SENT),  # none to add: Lago will refuse it, and the sink records why
    ],
)
def test_the_document_goes_as_sent(
    document: dict[str, Any], subscription: str | None, expected: dict[str, Any]
) -> None:
    assert lago_document(sink_event(document, subscription)) == expected


@pytest.mark.parametrize(
    ("body", "there", "refused"),
    [
        ({"error_details": {"1": {"transaction_id": ["value_already_exist"]}}}, {1}, set()),
        ({"error_details": {"0": {"transaction_id": ["value_is_mandatory"]}}}, set(), {0}),
        (
            {
                "error_details": {
                    "0": {"transaction_id": ["value_already_exist"], "code": ["x"]},
                    "2": {"t": "y"},
                }
            },
            set(),
            {0, 2},
        ),
        ({"error_details": {"events": ["too_many_events"]}}, set(), set()),  # batch-level: not per event
        ({"error_details": {"7": {"transaction_id": ["value_already_exist"]}}}, set(), set()),  # out of range
        ("Unprocessable", set(), set()),
        ({"code": "validation_errors"}, set(), set()),
    ],
)
def test_a_422_is_read_per_event(body: object, there: set[int], refused: set[int]) -> None:
    found_there, found_refused = read_422(body, 3)
    assert (found_there, set(found_refused)) == (there, refused)
