"""Outbound events of credits: which ones a change of a balance means (pure), and enqueuing them.

`credits.granted` for a new grant; `credits.balance_low` when a balance falls below one of its
type's catalog thresholds (`credits: {type: {balance_low: [...]}}`), once per crossing: the ledger
lock orders every change of a tenant's balance, so before/after name each crossing exactly once;
`credits.depleted` when it reaches zero or less from above; `credits.expired` with what an
expiry took.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tiergate.amounts import stored
from tiergate.catalog import Catalog
from tiergate.credits import crossed_below
from tiergate.sync_daemon.credits.ledger import Grant, Moved
from tiergate.sync_daemon.mirror.store import MirrorTxn
from tiergate.sync_daemon.outbound.queue import enqueue

Event = tuple[str, str, dict[str, Any]]  # (type, tenant, data)


def balance_events(catalog: Catalog, moved: Moved) -> list[Event]:
    """`credits.balance_low` per threshold crossed downwards, and `credits.depleted`."""
    kind = catalog.credits.get(moved.credit_type)
    data = {
        "tenant": moved.tenant,
        "credit_type": moved.credit_type,
        "balance_before": stored(moved.before),
        "balance": stored(moved.after),
    }
    events: list[Event] = []
    for threshold in sorted(kind.balance_low if kind else [], reverse=True):
        if crossed_below(moved.before, moved.after, threshold):
            events.append(("credits.balance_low", moved.tenant, {**data, "threshold": stored(threshold)}))
    if moved.before > 0 >= moved.after:
        events.append(("credits.depleted", moved.tenant, data))
    return events


def granted_event(grant: Grant) -> Event:
    return ("credits.granted", grant.tenant, {"tenant": grant.tenant, "grant": grant.render()})


def expired_event(grant: Grant, took: Any, moved: Moved) -> Event:
    data = {
        "tenant": grant.tenant,
        "credit_type": grant.credit_type,
        "grant_id": grant.id,
        "expired": stored(took),
        "balance": stored(moved.after),
    }
    return ("credits.expired", grant.tenant, data)


def send(txn: MirrorTxn, endpoints: Sequence[str], events: Sequence[Event]) -> int:
    """Enqueue the events in the caller's transaction: they commit with the change they describe."""
    for kind, tenant, data in events:
        enqueue(txn, endpoints, kind, tenant, data)
    return len(events) if endpoints else 0
