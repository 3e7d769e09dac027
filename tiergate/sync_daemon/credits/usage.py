"""Debits from usage: each newly stored event of a credit-priced feature takes its cost in burn order.

Runs in the ingest's transaction (tiergate/sync_daemon/usage.py), so an event and its debit commit
together: a replayed transaction id is neither stored nor debited again, and a debit is never
lost when the daemon dies (the event's batch is retried whole). A value at or below zero (a
correction) debits nothing: credits come back only as a grant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from tiergate.catalog import Catalog
from tiergate.credits import cost_of
from tiergate.models import ENDED_STATUSES
from tiergate.sync_daemon.credits.ledger import Moved, debit
from tiergate.sync_daemon.credits.plan_grants import grant_cycle
from tiergate.sync_daemon.mirror.schema import ACCOUNTS
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql
from tiergate.usage_events import ValidEvent


def debit_usage(
    txn: MirrorTxn, catalog: Catalog, events: Sequence[ValidEvent], inserted: Sequence[bool], now: datetime
) -> list[Moved]:
    """Debit the events this transaction stored (`inserted`), in (tenant, transaction id) order:
    two batches take the tenants' ledger locks in the same order."""
    priced = [e for e, new in zip(events, inserted, strict=True) if new and not e.gauge and e.value > 0]
    if not priced or not catalog.credits:
        return []
    tiers = _tiers(txn.sql, sorted({e.tenant for e in priced}), catalog)
    for tenant in sorted(t for t, tier in tiers.items() if catalog.tiers[tier].grants):
        grant_cycle(txn, catalog, tenant, now)  # a first use of the default tier meets its grant
    moved: list[Moved] = []
    for event in sorted(priced, key=lambda e: (e.tenant, e.transaction_id)):
        price = catalog.credit_cost(tiers[event.tenant], event.code)
        if price is None:
            continue
        credit_type, unit_cost = price
        amount = cost_of(unit_cost, event.value, catalog.credits[credit_type].decimals)
        change = debit(txn, event.tenant, credit_type, event.transaction_id, amount, now)
        if change is not None:
            moved.append(change)
    return moved


def _tiers(sql: Sql, tenants: list[str], catalog: Catalog) -> dict[str, str]:
    """Each tenant's tier as decisions see it: the subscribed one while live, else the default."""
    found: dict[str, str] = dict.fromkeys(tenants, catalog.default_tier)
    for start in range(0, len(tenants), 200):
        chunk = tenants[start : start + 200]
        rows = sql.execute(
            f"SELECT tenant, tier, status FROM {ACCOUNTS} WHERE tenant IN ({', '.join('?' for _ in chunk)})",
            chunk,
        ).fetchall()
        for tenant, tier, status in rows:
            if tier in catalog.tiers and status not in ENDED_STATUSES:
                found[str(tenant)] = str(tier)
    return found
