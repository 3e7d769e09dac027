"""Read-your-writes bookkeeping (pure): pending usage stays counted until the replica includes it."""

from __future__ import annotations

from tiergate.sidecar.usage.ledger import UsageLedger

A = ("t", "api_calls", "2026-03-01T00:00:00Z")
B = ("t", "exports", "2026-03-01T00:00:00Z")
P = "2026-03-01T00:00:00Z"


def test_overlay_adds_pending_to_the_replica() -> None:
    pending = UsageLedger()
    pending.add(A, 3)
    pending.add(B, 1)
    assert pending.overlay("t", P, {"api_calls": 10}, position=5) == {"api_calls": 13, "exports": 1}
    assert pending.overlay("other", P, {"api_calls": 10}, position=5) == {"api_calls": 10}
    assert pending.overlay("t", "2026-02-01T00:00:00Z", {}, position=5) == {}


def test_confirmed_usage_counts_until_the_replica_reaches_its_seq() -> None:
    pending = UsageLedger()
    pending.add(A, 3)
    pending.confirm(seq=7, deltas={A: 3})
    # the replica at 6 does not include it yet: still counted once
    assert pending.overlay("t", P, {"api_calls": 10}, position=6) == {"api_calls": 13}
    # at 7 the replica's counter includes it: dropped in the same step, never twice
    assert pending.overlay("t", P, {"api_calls": 13}, position=7) == {"api_calls": 13}
    assert pending.stats() == {"counters": 0, "awaiting_feed": 0}


def test_settle_in_seq_order_and_partial() -> None:
    pending = UsageLedger()
    pending.add(A, 5)
    pending.confirm(seq=9, deltas={A: 2})
    pending.confirm(seq=4, deltas={A: 1})
    assert pending.settle(None) == 0
    assert pending.settle(5) == 1 and pending.total(*A) == 4
    assert pending.settle(9) == 1 and pending.total(*A) == 2  # 2 still unconfirmed


def test_remove_undoes_a_tentative_reservation() -> None:
    pending = UsageLedger()
    pending.add(A, 1)
    pending.remove(A, 1)
    assert pending.stats()["counters"] == 0
    assert pending.overlay("t", P, {}, position=None) == {}


def test_pending_in_all_periods_sums_a_tenants_periods_for_credit_balances() -> None:
    """A credit balance is no period's: a hold made before a period's end (it keeps that period's
    key) still takes its credits after it, once, beside the new period's usage."""
    pending = UsageLedger()
    old = ("t", "images", "2026-02-01T00:00:00Z")
    new = ("t", "images", P)
    pending.add(old, 2)
    assert pending.pending_in_all_periods("t") == {"images": 2}
    pending.add(new, 3)
    pending.add(A, 1)
    assert pending.pending_in_all_periods("t") == {"images": 5, "api_calls": 1}
    assert pending.pending_in_all_periods("other") == {}
    pending.remove(old, 2)  # the hold ends: its period's key goes, the other stays
    assert pending.pending_in_all_periods("t") == {"images": 3, "api_calls": 1}
    pending.remove(new, 3)
    pending.remove(A, 1)
    assert pending.pending_in_all_periods("t") == {}
