"""Automatic top-ups: when a balance falls below a tenant's `below`, charge its pack off-session, once.

A crossing is seen in the transaction that moved the balance (`start_runs`, under the tenant's
ledger lock, so once per crossing) and leaves a `pending` run there. The leader's credits job
charges pending runs (`charge_due`) through the `TopUpCharger` port with the run's id as Stripe's
idempotency key, so a crash between the charge and its record charges once when retried. A
successful charge grants the pack (`source_ref`: the PaymentIntent, which its own webhook finds
granted); a declined one is a `credits.top_up_failed` event, never a grant.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from tiergate.amounts import Amount, from_stored, stored
from tiergate.catalog import Catalog
from tiergate.credits import crossed_below
from tiergate.periods import rfc3339
from tiergate.sync_daemon.credits.events import Event, balance_events, granted_event, send
from tiergate.sync_daemon.credits.ledger import Moved, NewGrant, add_grant
from tiergate.sync_daemon.credits.purchases import PACK_KEY, TOP_UP_KEY
from tiergate.sync_daemon.mirror.schema import ACCOUNTS, CREDIT_TOP_UP_RUNS, CREDIT_TOP_UPS, CUSTOMERS
from tiergate.sync_daemon.mirror.store import Mirror, MirrorTxn, Sql

log = structlog.get_logger("tiergate.credits")

RETRY_CHARGING_AFTER = timedelta(minutes=2)  # a run left `charging` by a daemon that died


@dataclass(frozen=True)
class TopUpRule:
    tenant: str
    credit_type: str
    below: Amount
    pack: str


@dataclass(frozen=True)
class Charge:
    """A top-up's charge as Stripe answered it: its PaymentIntent, or why it was declined."""

    payment_ref: str | None
    succeeded: bool
    error: str | None = None


class TopUpCharger(Protocol):
    """What the credits job needs of Stripe: charging top-ups, and the sessions to reconcile."""

    async def charge(
        self, customer_id: str, amount: int, currency: str, metadata: dict[str, str], idempotency_key: str
    ) -> Charge: ...

    async def completed_sessions(self, since: int) -> list[dict[str, Any]]: ...


def set_rule(txn: MirrorTxn, rule: TopUpRule, now: datetime) -> None:
    row = {
        "tenant": rule.tenant,
        "credit_type": rule.credit_type,
        "below": stored(rule.below),
        "pack": rule.pack,
        "updated_at": rfc3339(now),
    }
    txn.upsert(CREDIT_TOP_UPS, row, "tenant, credit_type")


def remove_rule(txn: MirrorTxn, tenant: str, credit_type: str) -> bool:
    cursor = txn.sql.execute(
        f"DELETE FROM {CREDIT_TOP_UPS} WHERE tenant = ? AND credit_type = ?", [tenant, credit_type]
    )
    return cursor.rowcount > 0


def rules_of(sql: Sql, tenant: str) -> list[TopUpRule]:
    rows = sql.execute(
        f"SELECT tenant, credit_type, below, pack FROM {CREDIT_TOP_UPS} WHERE tenant = ? ORDER BY credit_type",
        [tenant],
    ).fetchall()
    return [TopUpRule(str(t), str(c), from_stored(b), str(p)) for t, c, b, p in rows]


def after_moves(
    txn: MirrorTxn, catalog: Catalog, endpoints: Sequence[str], moves: Sequence[Moved], now: datetime
) -> None:
    """What balances moving down mean, in their transaction: outbound events and top-up runs."""
    send(txn, endpoints, [e for m in moves for e in balance_events(catalog, m)])
    start_runs(txn, moves, now)


def start_runs(txn: MirrorTxn, moves: Sequence[Moved], now: datetime) -> int:
    """A pending run for each move that crossed below its tenant's rule (in the move's transaction)."""
    started = 0
    for moved in moves:
        if moved.after >= moved.before:
            continue
        rule = next((r for r in rules_of(txn.sql, moved.tenant) if r.credit_type == moved.credit_type), None)
        if rule is None or not crossed_below(moved.before, moved.after, rule.below):
            continue
        at = rfc3339(now)
        txn.sql.execute(
            f"INSERT INTO {CREDIT_TOP_UP_RUNS} (id, tenant, credit_type, pack, state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            [f"topup_{uuid.uuid4().hex}", rule.tenant, rule.credit_type, rule.pack, at, at],
        )
        started += 1
    return started


@dataclass(frozen=True)
class Run:
    id: str
    tenant: str
    credit_type: str
    pack: str


def _claim(txn: MirrorTxn, now: datetime, limit: int) -> list[Run]:
    """Take the due runs (pending, or charging for too long) for this job: `charging` from now."""
    stale = rfc3339(now - RETRY_CHARGING_AFTER)
    rows = txn.sql.execute(
        f"SELECT id, tenant, credit_type, pack FROM {CREDIT_TOP_UP_RUNS} "
        "WHERE state = 'pending' OR (state = 'charging' AND updated_at <= ?) ORDER BY created_at, id LIMIT ?",
        [stale, limit],
    ).fetchall()
    runs = [Run(*(str(v) for v in row)) for row in rows]
    for run in runs:
        txn.sql.execute(
            f"UPDATE {CREDIT_TOP_UP_RUNS} SET state = 'charging', updated_at = ? WHERE id = ?",
            [rfc3339(now), run.id],
        )
    return runs


async def charge_due(
    mirror: Mirror,
    catalog: Catalog,
    charger: TopUpCharger,
    endpoints: Sequence[str],
    metadata_key: str,
    now: datetime,
    limit: int = 50,
) -> dict[str, int]:
    """Charge every due run once; a Stripe outage leaves the run to the next pass."""
    done = {"charged": 0, "failed": 0, "retry": 0}
    for run in await mirror.transact(lambda txn: _claim(txn, now, limit)):
        done[await _charge_one(mirror, catalog, charger, endpoints, metadata_key, run, now)] += 1
    return done


async def _charge_one(
    mirror: Mirror,
    catalog: Catalog,
    charger: TopUpCharger,
    endpoints: Sequence[str],
    metadata_key: str,
    run: Run,
    now: datetime,
) -> str:
    pack = catalog.packs.get(run.pack)
    customer = await mirror.read(lambda sql: _customer(sql, run.tenant))
    if pack is None or customer is None:
        why = "the pack is not in the catalog" if pack is None else "the tenant has no Stripe customer"
        refused = Charge(None, False, why)
        await mirror.transact(lambda txn: _finish(txn, catalog, run, refused, endpoints, now))
        return "failed"
    metadata = {metadata_key: run.tenant, PACK_KEY: run.pack, TOP_UP_KEY: "true"}
    try:
        charge = await charger.charge(customer, pack.price.unit_amount, pack.price.currency, metadata, run.id)
    except Exception:  # Stripe unreachable: the run stays `charging` and is retried later
        log.exception("credits_top_up_charge_failed", run=run.id, tenant=run.tenant)
        return "retry"
    await mirror.transact(lambda txn: _finish(txn, catalog, run, charge, endpoints, now))
    return "charged" if charge.succeeded else "failed"


def _finish(
    txn: MirrorTxn, catalog: Catalog, run: Run, charge: Charge, endpoints: Sequence[str], now: datetime
) -> None:
    state = "charged" if charge.succeeded else "failed"
    txn.sql.execute(
        f"UPDATE {CREDIT_TOP_UP_RUNS} SET state = ?, payment_ref = ?, error = ?, updated_at = ? WHERE id = ?",
        [state, charge.payment_ref, charge.error, rfc3339(now), run.id],
    )
    events: list[Event] = []
    pack = catalog.packs.get(run.pack)
    if charge.succeeded and charge.payment_ref is not None and pack is not None:
        new = NewGrant(
            run.tenant,
            pack.credits,
            pack.amount,
            "paid",
            "purchase",
            charge.payment_ref,
            pack.priority,
            None,
            now + timedelta(days=pack.expires_days) if pack.expires_days else None,
            None,
            f"pack {run.pack} (automatic top-up)",
            charge.payment_ref,
        )
        grant, created = add_grant(txn, new, now)
        if created:
            events.append(granted_event(grant))
    elif not charge.succeeded:
        data: dict[str, Any] = {
            "tenant": run.tenant,
            "credit_type": run.credit_type,
            "pack": run.pack,
            "run": run.id,
            "error": charge.error,
        }
        events.append(("credits.top_up_failed", run.tenant, data))
    send(txn, endpoints, events)


def _customer(sql: Sql, tenant: str) -> str | None:
    row = sql.execute(
        f"SELECT stripe_customer_id FROM {ACCOUNTS} WHERE tenant = ? AND stripe_customer_id IS NOT NULL",
        [tenant],
    ).fetchone()
    if row is not None:
        return str(row[0])
    row = sql.execute(
        f"SELECT customer_id FROM {CUSTOMERS} WHERE tenant = ? AND deleted_at IS NULL LIMIT 1", [tenant]
    ).fetchone()
    return str(row[0]) if row is not None else None


def runs_of(sql: Sql, tenant: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = sql.execute(
        f"SELECT id, credit_type, pack, state, payment_ref, error, created_at FROM {CREDIT_TOP_UP_RUNS} "
        "WHERE tenant = ? ORDER BY created_at DESC, id LIMIT ?",
        [tenant, limit],
    ).fetchall()
    names = ("id", "credit_type", "pack", "state", "payment_ref", "error", "created_at")
    return [dict(zip(names, row, strict=True)) for row in rows]
