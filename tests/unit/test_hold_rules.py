"""What a hold's settle records, by its overage rule, and which settles repeat the one that ended it."""

from __future__ import annotations

import pytest

from tiergate.sidecar.usage.hold_store import Hold
from tiergate.sidecar.usage.holds import Overage, is_replayed_settle, settle_quantity


@pytest.mark.parametrize(
    ("held", "asked", "overage", "recorded"),
    [
        (5, 0, "reject", 0),
        (5, 3, "reject", 3),
        (5, 5, "cap", 5),
        (5, 3, "allow", 3),
        (5, 6, "reject", None),  # the excess must be decided against the limit
        (5, 6, "cap", 5),
        (5, 6, "allow", 6),
        (1, 1_000_000_000, "cap", 1),
    ],
)
def test_settle_quantity(held: int, asked: int, overage: Overage, recorded: int | None) -> None:
    assert settle_quantity(held, asked, overage) == recorded


def ended(state: str, requested: int | None, recorded: int | None) -> Hold:
    return Hold("h_1", "t", "x", "api_calls", "2026-12-01", 5, 0.0, 300.0, state, requested, recorded, 1.0)


@pytest.mark.parametrize(
    ("hold", "asked", "replayed"),
    [
        (ended("settled", 3, 3), 3, True),
        (ended("settled", 9, 5), 9, True),  # capped: the same request again
        (ended("settled", 9, 5), 5, True),  # or what it recorded
        (ended("settled", 3, 3), 4, False),
        (ended("released", None, None), 0, False),
        (ended("expired", None, None), 3, False),
    ],
)
def test_is_replayed_settle(hold: Hold, asked: int, replayed: bool) -> None:
    assert is_replayed_settle(hold, asked) is replayed
