"""The sidecar's leases (tiergate/sidecar/leases/holder.py) against a daemon that answers late,
wrongly or not at all: a reserve waits for one refill at most, then is denied; nothing is spent
that was not granted."""

from __future__ import annotations

import asyncio
from typing import Any

from tiergate.client.gate import denial
from tiergate.models import Decision, PolicyAnswer
from tiergate.sidecar.leases.client import LeaseUnavailableError
from tiergate.sidecar.leases.holder import Leases
from tiergate.sidecar.leases.slice import Slice


class ScriptedDaemon:
    """Answers each exchange after `delay_s` with the next cumulative grant, or fails."""

    def __init__(self, grants: list[int], delay_s: float = 0.0, fail: bool = False) -> None:
        self.grants = grants
        self.delay_s = delay_s
        self.fail = fail
        self.asked: list[dict[str, Any]] = []

    async def exchange(
        self, lease: Slice, *, want: int, need: int, rate: float, release: bool
    ) -> dict[str, Any]:
        self.asked.append(
            {"acked": lease.acked, "spent": lease.spent, "want": want, "need": need, "release": release}
        )
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise LeaseUnavailableError("daemon down")
        granted = self.grants.pop(0) if self.grants else lease.granted
        return {"window": "w", "window_end_epoch": 4e9, "granted": granted, "free": 10, "ttl_s": 30}

    async def close(self) -> None:
        return None


async def test_a_late_refill_denies_after_the_wait_and_serves_the_next_reserve() -> None:
    daemon = ScriptedDaemon([5], delay_s=0.3)
    leases = Leases(daemon, wait_s=0.01)
    assert not await leases.take("t", "exports", 1)  # waited for one refill, then denied
    assert leases.stats.unavailable == 1
    await asyncio.sleep(0.4)  # the refill lands
    assert all([await leases.take("t", "exports", 1) for _ in range(5)])
    assert len(daemon.asked) == 1 or daemon.asked[1]["need"] == 0  # the rest were refills ahead of need


async def test_nothing_is_spent_beyond_the_grant() -> None:
    daemon = ScriptedDaemon([3])
    leases = Leases(daemon, wait_s=0.05)
    taken = [await leases.take("t", "exports", 1) for _ in range(6)]
    assert taken == [True, True, True, False, False, False]


async def test_a_daemon_down_denies_and_is_visible() -> None:
    leases = Leases(ScriptedDaemon([], fail=True), wait_s=0.05)
    assert not await leases.take("t", "exports", 2)
    status = leases.status()
    assert status["refill_failures"] == 1 and status["quota_unavailable"] == 1
    assert "daemon down" in str(status["last_error"])


async def test_acknowledged_units_are_reported_and_release_gives_back_the_rest() -> None:
    daemon = ScriptedDaemon([4])
    leases = Leases(daemon, wait_s=0.05)
    assert await leases.take("t", "exports", 2)
    leases.spent_as("t", "exports", [("a", 1), ("b", 1)])
    leases.delivered([("t", "a"), ("t", "b"), ("t", "unknown")])
    await leases.close()
    assert daemon.asked[-1] == {"acked": 2, "spent": 2, "want": 0, "need": 0, "release": True}


def test_an_app_gate_answers_quota_unavailable_with_429_and_a_short_retry() -> None:
    answer = PolicyAnswer(allow=False, reason="quota_unavailable", tier="free")
    decision = Decision.of(
        answer,
        tenant="t",
        feature="exports",
        quantity=1,
        decision_id="d",
        policy_revision="r",
        data_as_of=None,
        stale=False,
    )
    denied = denial(decision)
    assert denied is not None and denied.status == 429 and denied.headers == {"Retry-After": "1"}


async def test_a_hold_draws_its_units_and_assigns_them_to_its_usage_or_gives_them_back() -> None:
    daemon = ScriptedDaemon([10])
    leases = Leases(daemon, wait_s=0.05)
    first = await leases.draw("t", "exports", 4)
    second = await leases.draw("t", "exports", 3)
    assert first is not None and second is not None and first.lease is second.lease
    lease = first.lease
    assert (lease.spent, lease.held) == (7, 7)
    # Settled 2 of 4: two events are acknowledged against the lease, the other 2 units return.
    leases.assign("t", [first], [("h1", 1), ("h1/2", 1)])
    assert (lease.spent, lease.held) == (5, 3)
    # A sum metric's one event over two draws (the hold's and an excess drawn at settle) is split;
    # units beyond every draw (overage "allow") were never leased and are not acknowledged.
    excess = await leases.draw("t", "exports", 2)
    assert excess is not None
    leases.assign("t", [second, excess], [("h2", 9)])
    assert (lease.spent, lease.held) == (7, 0)
    leases.delivered([("t", "h1"), ("t", "h1/2"), ("t", "h2")])
    assert lease.acked == 7  # never more than was spent from the lease
    # Released (no usage): every drawn unit returns, so the lease can give all of it again.
    third = await leases.draw("t", "exports", 3)
    assert third is not None
    leases.assign("t", [third], [])
    assert lease.spent == 7 and lease.available(leases.clock(), leases.wall()) == 3


async def test_a_leased_hold_keeps_its_lease_renewed_and_units_of_a_lapsed_lease_stay_out() -> None:
    daemon = ScriptedDaemon([5])
    leases = Leases(daemon, wait_s=0.05)
    drawn = await leases.draw("t", "exports", 2)
    assert drawn is not None
    drawn.lease.last_used -= 3600  # idle for an hour, but a hold still holds 2 of its units
    drawn.lease.deadline = leases.clock() + 1  # near its deadline
    await leases.renew()
    assert daemon.asked[-1]["release"] is False  # renewed, not given back
    drawn.lease.deadline = leases.clock() - 1  # lapsed (the daemon will expire it): replaced
    leases.assign("t", [drawn], [])
    assert drawn.lease.spent == 2  # not given back to a lease the daemon may have freed
