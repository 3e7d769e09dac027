"""Lease arithmetic (tiergate/sync_daemon/leases/sizing.py) and a holder's slice (tiergate/sidecar/leases/slice.py)."""

from __future__ import annotations

from tiergate.sidecar.leases.slice import DEADLINE_SHARE, Slice
from tiergate.sync_daemon.leases.sizing import Ask, Lease, free_units, grant_size, released, reported


def ask(want: int = 10, need: int = 1, rate: float = 1.0, acked: int = 0, spent: int = 0) -> Ask:
    return Ask("h", acked=acked, spent=spent, want=want, need=need, rate=rate)


def test_free_is_the_limit_less_counted_and_held() -> None:
    leases = [Lease("a", 10, 4, 1.0, 0.0), Lease("b", 5, 5, 1.0, 0.0)]
    assert free_units(100, 30, leases) == 100 - 30 - 6


def test_a_share_follows_recent_rates() -> None:
    # 80 free, three holders: the asker spends 3/s, the others 1/s each: 3/5 of 80
    assert grant_size(80, ask(want=1000, rate=3.0), [1.0, 1.0, 3.0]) == 48
    assert grant_size(80, ask(want=5, rate=3.0), [1.0, 1.0, 3.0]) == 5  # never more than it wants
    assert grant_size(80, ask(want=0, need=7, rate=0.0), [1.0, 0.0]) == 7  # at least what a check waits for


def test_the_last_units_go_one_check_at_a_time() -> None:
    assert grant_size(3, ask(want=50, need=1), [1.0, 1.0]) == 1
    assert grant_size(3, ask(want=50, need=0), [1.0, 1.0]) == 0  # a refill ahead of need gets none
    assert grant_size(0, ask(need=1), [1.0]) == 0
    assert grant_size(-4, ask(need=1), [1.0]) == 0


def test_acked_never_passes_granted_and_never_goes_back() -> None:
    lease = Lease("h", granted=5, acked=2, rate=0.0, expires_at=0.0)
    assert reported(lease, ask(acked=9), 1.0, 10.0).acked == 5  # a stale report cannot free units
    assert reported(lease, ask(acked=1), 1.0, 10.0).acked == 2  # nor an old one take them back


def test_release_returns_what_is_unspent_and_keeps_what_is_not_counted_yet() -> None:
    lease = Lease("h", granted=10, acked=3, rate=0.0, expires_at=0.0)
    assert released(lease, ask(spent=6)).holds == 3  # 6 spent, 3 of them acknowledged
    assert released(lease, ask(spent=3)).holds == 0


def test_a_slice_spends_only_what_was_granted_before_its_deadline() -> None:
    lease = Slice("t", "exports")
    window = {"window": "2026-12-01T00:00:00Z", "window_end_epoch": 4e9, "ttl_s": 30}
    assert not lease.usable(0.0, 0.0, 1)  # nothing asked yet
    lease.answered(100.0, {**window, "granted": 3, "free": 7})
    assert lease.usable(101.0, 0.0, 3) and not lease.usable(101.0, 0.0, 4)
    lease.spend(101.0, 3)
    assert lease.available(101.0, 0.0) == 0
    lease.answered(102.0, {**window, "granted": 2, "free": 0})
    assert lease.granted == 3  # an older, smaller cumulative grant arriving late changes nothing
    assert lease.exhausted
    lease.answered(103.0, {**window, "granted": 5, "free": 0})
    assert not lease.usable(
        103.0 + 30 * DEADLINE_SHARE, 0.0, 1
    )  # past the deadline: the daemon may expire it


def test_a_slice_stops_at_the_end_of_its_window() -> None:
    lease = Slice("t", "exports")
    lease.answered(0.0, {"window": "w", "window_end_epoch": 1000.0, "granted": 10, "free": 90, "ttl_s": 30})
    assert lease.usable(1.0, 999.9, 1) and not lease.usable(1.0, 1000.0, 1)
