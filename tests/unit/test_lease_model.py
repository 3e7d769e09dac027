"""An exhaustive-state model of the quota lease protocol (docs/adr/0045), checked by breadth-first
search over every interleaving: messages lost, duplicated and reordered, a holder crashed.

Actors: the daemon (the lease authority) and holders (sidecars). A holder asks for units
(`req`: its cumulative acknowledged spend, how many it wants); the daemon answers with the
lease's cumulative grant (`grant`); the holder spends inside what it knows it was granted; each
spend is a usage event delivered at least once (`use`), counted once by the daemon, acknowledged
(`ack`). The daemon keeps, per holder, `granted` and the highest acknowledged spend it was told,
and grants at most `limit - counted - sum(granted - acked)`.

The invariant checked in every reachable state: units spent (allowed to callers) never exceed
the limit, and the daemon never counts an event twice. Two mutants show the check can fail: a
daemon trusting a holder's *spent* instead of its *acknowledged* spend, and a lease expired while
its holder's spent usage has not reached the daemon.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

LIMIT = 2
HOLDERS = 2
WANTS = (1, 2)  # a holder asks for one unit (the last units) or two (a larger share)
IN_FLIGHT = 2  # messages the network holds at once (reordered, duplicated or lost among them)


class Holder(NamedTuple):
    granted: int  # the highest cumulative grant it has heard of
    spent: int  # events 0..spent-1 were allowed
    sent: int  # events 0..sent-1 left for the daemon (the outbox keeps them: durable)
    acked: frozenset[int]  # events the daemon acknowledged as counted
    running: bool  # False: crashed, or its local lease deadline passed (it spends no more)


class Lease(NamedTuple):
    granted: int
    acked: int  # the highest acknowledged spend a request reported


class State(NamedTuple):
    holders: tuple[Holder, ...]
    leases: tuple[Lease | None, ...]
    counted: frozenset[tuple[int, int]]  # (holder, event) counted by the daemon
    net: frozenset[tuple[object, ...]]  # messages in flight: a set (a duplicate is a copy kept)


@dataclass(frozen=True)
class Protocol:
    trust_spent: bool = False  # mutant: the daemon frees what a holder says it spent, acked or not
    expire_early: bool = False  # mutant: a lease expires while its holder's usage is undelivered


def initial() -> State:
    idle = Holder(0, 0, 0, frozenset(), True)
    return State((idle,) * HOLDERS, (None,) * HOLDERS, frozenset(), frozenset())


def free(state: State) -> int:
    outstanding = sum(lease.granted - lease.acked for lease in state.leases if lease is not None)
    return LIMIT - len(state.counted) - outstanding


def _holder(state: State, h: int, **changes: Any) -> State:
    holders = list(state.holders)
    holders[h] = holders[h]._replace(**changes)
    return state._replace(holders=tuple(holders))


def _lease(state: State, h: int, lease: Lease | None) -> State:
    leases = list(state.leases)
    leases[h] = lease
    return state._replace(leases=tuple(leases))


def _send(state: State, *messages: tuple[object, ...]) -> State:
    return state._replace(net=state.net | frozenset(messages))


def _room(state: State) -> bool:
    return len(state.net) < IN_FLIGHT


def holder_steps(state: State, h: int, protocol: Protocol) -> Iterator[State]:
    me = state.holders[h]
    if me.running:
        reported = me.spent if protocol.trust_spent else len(me.acked)
        for want in WANTS if _room(state) else ():
            yield _send(state, ("req", h, reported, want))
        if me.spent < me.granted:
            yield _holder(state, h, spent=me.spent + 1)
        yield _holder(state, h, running=False)  # kill -9, or its deadline passed unrenewed
    if me.sent < me.spent and _room(state):  # delivery goes on after a crash: the restarted process's outbox
        yield _send(_holder(state, h, sent=me.sent + 1), ("use", h, me.sent))


def daemon_receives(state: State, message: tuple[object, ...]) -> State:
    kind, h = message[0], message[1]
    assert isinstance(h, int)
    if kind == "req":
        _, _, reported, want = message
        assert isinstance(reported, int) and isinstance(want, int)
        lease = state.leases[h] or Lease(0, 0)
        # Never more than granted: a stale request reaching a lease created again after expiry
        # must not free units (the model found that overshoot).
        lease = lease._replace(acked=min(lease.granted, max(lease.acked, reported)))
        state = _lease(state, h, lease)
        grant = max(0, min(want, free(state)))
        state = _lease(state, h, lease._replace(granted=lease.granted + grant))
        return _send(state, ("grant", h, lease.granted + grant))
    if kind == "use":
        event = message[2]
        assert isinstance(event, int)
        return _send(state._replace(counted=state.counted | {(h, event)}), ("ack", h, event))
    me = state.holders[h]
    if kind == "grant":
        granted = message[2]
        assert isinstance(granted, int)
        return _holder(state, h, granted=max(me.granted, granted)) if me.running else state
    event = message[2]
    assert isinstance(event, int)
    return _holder(state, h, acked=me.acked | {event})


def expiry_steps(state: State, protocol: Protocol) -> Iterator[State]:
    for h, lease in enumerate(state.leases):
        me = state.holders[h]
        delivered = all((h, e) in state.counted for e in range(me.spent))
        if lease is not None and not me.running and (delivered or protocol.expire_early):
            yield _lease(state, h, None)


def successors(state: State, protocol: Protocol) -> Iterator[State]:
    for h in range(HOLDERS):
        yield from holder_steps(state, h, protocol)
    for message in state.net:
        received = daemon_receives(state, message)
        yield received._replace(net=received.net - {message})  # delivered once
        yield received  # delivered, and a duplicate stays in flight
        yield state._replace(net=state.net - {message})  # lost
    yield from expiry_steps(state, protocol)


def violation(state: State) -> str | None:
    spent = sum(holder.spent for holder in state.holders)
    if spent > LIMIT:
        return f"{spent} units allowed against a limit of {LIMIT}"
    if len(state.counted) > spent:
        return "an event counted twice"
    return None


@dataclass
class Result:
    states: int
    violation: str | None
    trace: list[State]
    units_came_back: bool  # some state where every holder stopped and nothing is held


def explore(protocol: Protocol, max_states: int = 2_000_000) -> Result:
    start = initial()
    parents: dict[State, State | None] = {start: None}
    queue = deque([start])
    came_back = False
    while queue:
        state = queue.popleft()
        problem = violation(state)
        if problem is not None:
            return Result(len(parents), problem, _trace(parents, state), came_back)
        if all(not h.running for h in state.holders) and all(lease is None for lease in state.leases):
            came_back = came_back or free(state) == LIMIT - len(state.counted)
        for following in successors(state, protocol):
            if following not in parents:
                parents[following] = state
                queue.append(following)
        assert len(parents) <= max_states, "the model grew past its bound: shrink LIMIT or WANTS"
    return Result(len(parents), None, [], came_back)


def _trace(parents: dict[State, State | None], last: State) -> list[State]:
    trace = [last]
    while (parent := parents[trace[-1]]) is not None:
        trace.append(parent)
    return trace[::-1]


def test_the_protocol_never_allows_more_than_the_limit() -> None:
    result = explore(Protocol())
    assert result.violation is None, result.trace
    assert result.states > 10_000  # the interleavings were explored, not a handful of states
    assert result.units_came_back  # a crashed holder's lease expires and its units are free again


def test_freeing_what_was_spent_but_not_counted_overshoots() -> None:
    result = explore(Protocol(trust_spent=True))
    assert result.violation is not None


def test_expiring_a_lease_before_its_usage_arrives_overshoots() -> None:
    result = explore(Protocol(expire_early=True))
    assert result.violation is not None


def test_a_lost_grant_is_recovered_by_the_next_answer() -> None:
    """Grants are cumulative: a holder that missed one learns it from the next."""
    state = daemon_receives(initial(), ("req", 0, 0, 2))
    state = state._replace(net=frozenset())  # the grant of 2 is lost
    state = daemon_receives(state, ("req", 0, 0, 2))
    (grant,) = state.net
    assert grant == ("grant", 0, 2)
    assert replace(Protocol()).trust_spent is False
