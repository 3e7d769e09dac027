"""The daemon's mirror lag (how far it may be behind Stripe) and how a sidecar reads it off the feed."""

from __future__ import annotations

import math

import pytest

from tiergate.feed import reported_lag
from tiergate.sync_daemon.stripe_sync.reconcile import MirrorLag


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_lag_until_a_reconcile_fails_then_since_the_last_success() -> None:
    clock = Clock()
    lag = MirrorLag(clock)
    assert lag.seconds() == 0.0  # nothing run yet: webhooks keep the mirror current
    lag.observe(True, clock.now)
    clock.now += 50
    assert lag.seconds() == 0.0  # the latest run succeeded
    started = clock.now
    clock.now += 5
    lag.observe(False, started)
    assert lag.seconds() == 55.0  # since the last success, not since the failure
    clock.now += 100
    lag.observe(False, clock.now)
    assert lag.seconds() == 155.0
    lag.observe(True, clock.now)
    assert lag.seconds() == 0.0


def test_with_no_success_in_this_process_since_the_first_failed_attempt_began() -> None:
    clock = Clock()
    lag = MirrorLag(clock)
    lag.observe(False, clock.now - 3)
    clock.now += 10
    lag.observe(False, clock.now)  # a later failure does not restart the count
    assert lag.seconds() == 13.0


@pytest.mark.parametrize(
    ("document", "lag"),
    [
        ({"mirror_lag_s": 2.5}, 2.5),
        ({"mirror_lag_s": 0}, 0.0),
        ({}, 0.0),  # a daemon from before the field
        ({"mirror_lag_s": -1}, 0.0),
        ({"mirror_lag_s": math.nan}, 0.0),
        ({"mirror_lag_s": math.inf}, 0.0),
        ({"mirror_lag_s": "3"}, 0.0),
        ({"mirror_lag_s": True}, 0.0),
        (None, 0.0),
    ],
)
def test_a_sidecar_reads_the_reported_lag_or_zero(document: object, lag: float) -> None:
    assert reported_lag(document) == lag
