"""The credits ledger in the mirror: grants, append-only entries, debits in burn order.

Every function runs inside `Mirror.transact` under the tenant's credits lock, so a
read-decide-write of one tenant's grants never interleaves with another daemon's. A grant's
`remaining` is a cache of the sum of its entries (`rebuilt_remaining` recomputes it); a balance is
the spendable grants' remaining less a debt (`overdraft` entries: usage the daemon learnt of when
no grant could cover it, repaid by the next grant). Each change to a tenant's credits is logged for
followers as a `credits` change carrying that type's balance (tiergate/feed.py FeedCredits).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from tiergate.amounts import Amount, add, from_stored, negate, stored, total
from tiergate.credits import Category, LiveGrant, allocate, balance, next_expiry, subtract
from tiergate.periods import parse_rfc3339, rfc3339
from tiergate.sync_daemon.mirror.schema import CREDIT_DEBITS, CREDIT_ENTRIES, CREDIT_GRANTS, CREDIT_STATES
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql

Source = Literal["plan", "rollover", "purchase", "manual", "stripe"]
State = Literal["active", "expired", "voided"]
_GRANT_COLUMNS = (
    "id, tenant, credit_type, amount, remaining, category, priority, effective_at, expires_at, "
    "source, source_ref, state, actor, reason, created, created_at, external_ref"
)


@dataclass(frozen=True)
class NewGrant:
    """A grant to make; `source_ref` makes it once (the plan cycle, the Checkout session, the
    Idempotency-Key, the Stripe credit grant): a second request with the same one gets the first."""

    tenant: str
    credit_type: str
    amount: Amount
    category: Category
    source: Source
    source_ref: str
    priority: int = 50
    effective_at: datetime | None = None  # None: now
    expires_at: datetime | None = None
    actor: str | None = None
    reason: str | None = None
    external_ref: str | None = None  # the payment (intent) behind a purchase: what a refund names


@dataclass(frozen=True)
class Grant:
    id: str
    tenant: str
    credit_type: str
    amount: Amount
    remaining: Amount
    category: Category
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    source: Source
    source_ref: str
    state: State
    actor: str | None
    reason: str | None
    created: int
    created_at: str
    external_ref: str | None = None

    def live(self) -> LiveGrant:
        return LiveGrant(
            self.id,
            self.remaining,
            self.category,
            self.priority,
            self.effective_at,
            self.expires_at,
            self.created,
        )

    def render(self) -> dict[str, Any]:
        """As the daemon's API answers it (amounts exact: an int, or the decimal as a string)."""
        return {
            "id": self.id,
            "credit_type": self.credit_type,
            "amount": stored(self.amount),
            "remaining": stored(self.remaining),
            "category": self.category,
            "priority": self.priority,
            "effective_at": rfc3339(self.effective_at),
            "expires_at": rfc3339(self.expires_at),
            "source": self.source,
            "source_ref": self.source_ref,
            "state": self.state,
            "actor": self.actor,
            "reason": self.reason,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Moved:
    """A change to one tenant's balance of one credit type: before and after (for outbound events)."""

    tenant: str
    credit_type: str
    before: Amount
    after: Amount


def add_grant(txn: MirrorTxn, new: NewGrant, now: datetime) -> tuple[Grant, bool]:
    """Make the grant once per (tenant, source, source_ref): (the grant, whether it is new)."""
    txn.lock("credits", new.tenant)
    held = _grant_by_ref(txn.sql, new.tenant, new.source, new.source_ref)
    if held is not None:
        return held, False
    grant_id = "cg_" + secrets.token_hex(12)
    created = _entry(txn.sql, new.tenant, new.credit_type, grant_id, "grant", new.amount, None, now)
    grant = Grant(
        grant_id,
        new.tenant,
        new.credit_type,
        new.amount,
        new.amount,
        new.category,
        new.priority,
        new.effective_at or now,
        new.expires_at,
        new.source,
        new.source_ref,
        "active",
        new.actor,
        new.reason,
        created,
        rfc3339(now) or "",
        new.external_ref,
    )
    txn.sql.execute(
        f"INSERT INTO {CREDIT_GRANTS} ({_GRANT_COLUMNS}) VALUES ({', '.join('?' for _ in range(17))})",
        _grant_row(grant),
    )
    grant = _repay_debt(txn.sql, grant, now)
    _log(txn, new.tenant, new.credit_type, now)
    return grant, True


def debit(
    txn: MirrorTxn, tenant: str, credit_type: str, transaction_id: str, amount: Amount, now: datetime
) -> Moved | None:
    """Take `amount` in burn order for one usage transaction; None when it was debited already.
    What no grant covers becomes a debt (an `overdraft` entry) the next grant repays."""
    txn.lock("credits", tenant)
    taken = txn.sql.execute(
        f"INSERT INTO {CREDIT_DEBITS} (tenant, transaction_id, credit_type, amount, at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (tenant, transaction_id) DO NOTHING",
        [tenant, transaction_id, credit_type, stored(amount), rfc3339(now)],
    )
    if taken.rowcount == 0:
        return None
    grants = active_grants(txn.sql, tenant, credit_type)
    before = balance([g.live() for g in grants], now, _debt(txn.sql, tenant, credit_type))
    allocation = allocate([g.live() for g in grants], amount, now)
    by_id = {g.id: g for g in grants}
    for grant_id, part in allocation.taken:
        _entry(txn.sql, tenant, credit_type, grant_id, "debit", negate(part), transaction_id, now)
        _set_remaining(txn.sql, grant_id, subtract(by_id[grant_id].remaining, part), "active")
    if allocation.shortfall > 0:
        _entry(
            txn.sql, tenant, credit_type, None, "overdraft", negate(allocation.shortfall), transaction_id, now
        )
    after = _log(txn, tenant, credit_type, now)
    return Moved(tenant, credit_type, before, after)


def expire_due(txn: MirrorTxn, now: datetime, limit: int = 500) -> list[tuple[Grant, Moved]]:
    """Expire grants whose `expires_at` has come: what was left of each leaves the balance.

    Each comes back as it was before (its `remaining`: what expired) with the balance's move at
    its expiry: from what it was with the grant to what it is without."""
    due = txn.sql.execute(
        f"SELECT {_GRANT_COLUMNS} FROM {CREDIT_GRANTS} WHERE state = 'active' AND expires_at <= ? "
        "ORDER BY expires_at, id LIMIT ?",
        [rfc3339(now), limit],
    ).fetchall()
    done: list[tuple[Grant, Moved]] = []
    # Tenants' locks in tenant order, as every other multi-tenant writer takes them (no deadlock).
    for grant in sorted((_grant(row) for row in due), key=lambda g: (g.tenant, g.id)):
        txn.lock("credits", grant.tenant)
        fresh = _grant_by_id(txn.sql, grant.tenant, grant.id)
        if fresh is None or fresh.state != "active":
            continue  # another daemon expired it first
        after = _close(txn, fresh, "expire", "expired", now).after
        done.append((fresh, Moved(fresh.tenant, fresh.credit_type, add(after, fresh.remaining), after)))
    return done


@dataclass(frozen=True)
class Voided:
    grant: Grant  # as it is now (state `voided` when it was active)
    voided: Amount  # the unspent part this void took: 0 when the grant was no longer active
    moved: Moved | None  # the balance's change, None when nothing moved


def void_grant(
    txn: MirrorTxn,
    tenant: str,
    grant_id: str,
    now: datetime,
    *,
    at_most: Amount | None = None,
    note: str | None = None,
) -> Voided | None:
    """Void the unspent part of a grant, or at most `at_most` of it (a partial refund): what was
    spent stays spent; None: no such grant. `note` names the cause in the entry (a refund's)."""
    txn.lock("credits", tenant)
    grant = _grant_by_id(txn.sql, tenant, grant_id)
    if grant is None:
        return None
    if grant.state != "active":
        return Voided(grant, 0, None)
    if at_most is None or at_most >= grant.remaining:
        moved = _close(txn, grant, "void", "voided", now, note)
        return Voided(replace(grant, remaining=0, state="voided"), grant.remaining, moved)
    if at_most <= 0:
        return Voided(grant, 0, None)
    before = _balance_of(txn.sql, tenant, grant.credit_type, now)
    _entry(txn.sql, tenant, grant.credit_type, grant.id, "void", negate(at_most), note, now)
    left = subtract(grant.remaining, at_most)
    _set_remaining(txn.sql, grant.id, left, "active")
    after = _log(txn, tenant, grant.credit_type, now)
    return Voided(replace(grant, remaining=left), at_most, Moved(tenant, grant.credit_type, before, after))


def voided_for(sql: Sql, grant_id: str, note: str) -> Amount:
    """What `note`'s voids (e.g. one payment's refunds) took from a grant so far."""
    rows = sql.execute(
        f"SELECT amount FROM {CREDIT_ENTRIES} WHERE grant_id = ? AND kind = 'void' AND transaction_id = ?",
        [grant_id, note],
    ).fetchall()
    return negate(total(from_stored(row[0]) for row in rows))


def grants_paid_by(sql: Sql, external_ref: str) -> list[Grant]:
    rows = sql.execute(
        f"SELECT {_GRANT_COLUMNS} FROM {CREDIT_GRANTS} WHERE external_ref = ? ORDER BY created",
        [external_ref],
    ).fetchall()
    return [_grant(row) for row in rows]


def set_expiry(txn: MirrorTxn, grant: Grant, expires_at: datetime | None, now: datetime) -> Grant:
    """A new expiry for an active grant (a Stripe credit grant's update)."""
    if grant.state != "active" or grant.expires_at == expires_at:
        return grant
    txn.sql.execute(
        f"UPDATE {CREDIT_GRANTS} SET expires_at = ? WHERE id = ?", [rfc3339(expires_at), grant.id]
    )
    _log(txn, grant.tenant, grant.credit_type, now)
    return replace(grant, expires_at=expires_at)


def take_for_rollover(txn: MirrorTxn, grant: Grant, part: Amount, now: datetime) -> Grant:
    """Move `part` of an ended grant's leftover out (a `rollover` entry) for the next cycle's grant."""
    _entry(txn.sql, grant.tenant, grant.credit_type, grant.id, "rollover", negate(part), None, now)
    left = subtract(grant.remaining, part)
    _set_remaining(txn.sql, grant.id, left, "active")
    return replace(grant, remaining=left)


def expire_grant(txn: MirrorTxn, grant: Grant, now: datetime) -> Moved:
    """Expire one grant now (the caller holds the tenant's credits lock): its leftover goes."""
    return _close(txn, grant, "expire", "expired", now)


def grant_by_ref(sql: Sql, tenant: str, source: Source, source_ref: str) -> Grant | None:
    return _grant_by_ref(sql, tenant, source, source_ref)


def tenant_grants(sql: Sql, tenant: str, *, active_only: bool = False) -> list[Grant]:
    state = "AND state = 'active' " if active_only else ""
    rows = sql.execute(
        f"SELECT {_GRANT_COLUMNS} FROM {CREDIT_GRANTS} WHERE tenant = ? {state}ORDER BY created",
        [tenant],
    ).fetchall()
    return [_grant(row) for row in rows]


def active_grants(sql: Sql, tenant: str, credit_type: str) -> list[Grant]:
    rows = sql.execute(
        f"SELECT {_GRANT_COLUMNS} FROM {CREDIT_GRANTS} WHERE tenant = ? AND credit_type = ? "
        "AND state = 'active' ORDER BY created",
        [tenant, credit_type],
    ).fetchall()
    return [_grant(row) for row in rows]


@dataclass(frozen=True)
class TypeBalance:
    credit_type: str
    balance: Amount
    debt: Amount
    next_expiry: datetime | None
    grants: tuple[Grant, ...]  # the active ones (some may take effect later)

    def feed(self, tenant: str) -> dict[str, Any]:
        """The FeedCredits document followers receive: enough to know the balance at any later
        moment without the daemon (what expires or takes effect when)."""
        return {
            "tenant": tenant,
            "credit_type": self.credit_type,
            "debt": stored(self.debt),
            "grants": [
                {
                    "remaining": stored(g.remaining),
                    "effective_at": rfc3339(g.effective_at),
                    "expires_at": rfc3339(g.expires_at),
                }
                for g in self.grants
                if g.remaining > 0
            ],
        }

    def render(self) -> dict[str, Any]:
        return {
            "credit_type": self.credit_type,
            "balance": stored(self.balance),
            "debt": stored(self.debt),
            "next_expiry": rfc3339(self.next_expiry),
            "grants": [g.render() for g in self.grants],
        }


def type_balance(sql: Sql, tenant: str, credit_type: str, now: datetime) -> TypeBalance:
    grants = active_grants(sql, tenant, credit_type)
    live = [g.live() for g in grants]
    debt = _debt(sql, tenant, credit_type)
    return TypeBalance(credit_type, balance(live, now, debt), debt, next_expiry(live, now), tuple(grants))


def tenant_balances(sql: Sql, tenant: str, now: datetime) -> list[TypeBalance]:
    kinds = sql.execute(
        f"SELECT DISTINCT credit_type FROM {CREDIT_ENTRIES} WHERE tenant = ? ORDER BY credit_type", [tenant]
    ).fetchall()
    return [type_balance(sql, tenant, str(row[0]), now) for row in kinds]


def ledger_page(sql: Sql, tenant: str, after: int, limit: int) -> list[dict[str, Any]]:
    """The tenant's entries after entry `after`, oldest first (page on with the last id)."""
    rows = sql.execute(
        f"SELECT id, credit_type, grant_id, kind, amount, transaction_id, at FROM {CREDIT_ENTRIES} "
        "WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
        [tenant, after, limit],
    ).fetchall()
    return [_entry_row(row) for row in rows]


_ENTRY_NAMES = ("id", "credit_type", "grant_id", "kind", "amount", "transaction_id", "at")


def _entry_row(row: Sequence[Any]) -> dict[str, Any]:
    entry = dict(zip(_ENTRY_NAMES, row, strict=True))
    entry["amount"] = stored(from_stored(entry["amount"]))
    entry["id"] = int(entry["id"])
    return entry


def recent_entries(sql: Sql, tenant: str, limit: int, before: int | None = None) -> list[dict[str, Any]]:
    """The tenant's newest `limit` entries (before entry `before`, when given), newest first."""
    bound = "AND id < ? " if before is not None else ""
    rows = sql.execute(
        f"SELECT id, credit_type, grant_id, kind, amount, transaction_id, at FROM {CREDIT_ENTRIES} "
        f"WHERE tenant = ? {bound}ORDER BY id DESC LIMIT ?",
        [tenant, *([before] if before is not None else []), limit],
    ).fetchall()
    return [_entry_row(row) for row in rows]


def rebuilt_remaining(sql: Sql, tenant: str) -> dict[str, Amount]:
    """Each grant's remaining recomputed from the entries alone (the ledger is the truth)."""
    rows = sql.execute(
        f"SELECT grant_id, amount FROM {CREDIT_ENTRIES} WHERE tenant = ? AND grant_id IS NOT NULL", [tenant]
    ).fetchall()
    sums: dict[str, Amount] = {}
    for grant_id, amount in rows:
        sums[str(grant_id)] = add(sums.get(str(grant_id), 0), from_stored(amount))
    return sums


def _close(
    txn: MirrorTxn,
    grant: Grant,
    kind: Literal["expire", "void"],
    state: State,
    now: datetime,
    note: str | None = None,
) -> Moved:
    before = _balance_of(txn.sql, grant.tenant, grant.credit_type, now)
    if grant.remaining != 0:
        _entry(txn.sql, grant.tenant, grant.credit_type, grant.id, kind, negate(grant.remaining), note, now)
    _set_remaining(txn.sql, grant.id, 0, state)
    after = _log(txn, grant.tenant, grant.credit_type, now)
    return Moved(grant.tenant, grant.credit_type, before, after)


def _repay_debt(sql: Sql, grant: Grant, now: datetime) -> Grant:
    debt = _debt(sql, grant.tenant, grant.credit_type)
    if debt <= 0 or not grant.live().spendable(now):
        return grant
    part = debt if debt <= grant.remaining else grant.remaining
    _entry(sql, grant.tenant, grant.credit_type, grant.id, "debit", negate(part), "repay", now)
    _entry(sql, grant.tenant, grant.credit_type, None, "repay", part, "repay", now)
    left = subtract(grant.remaining, part)
    _set_remaining(sql, grant.id, left, "active")
    return replace(grant, remaining=left)


def _debt(sql: Sql, tenant: str, credit_type: str) -> Amount:
    rows = sql.execute(
        f"SELECT amount FROM {CREDIT_ENTRIES} WHERE tenant = ? AND credit_type = ? AND grant_id IS NULL",
        [tenant, credit_type],
    ).fetchall()
    return negate(total(from_stored(row[0]) for row in rows))


def _balance_of(sql: Sql, tenant: str, credit_type: str, now: datetime) -> Amount:
    return type_balance(sql, tenant, credit_type, now).balance


def _log(txn: MirrorTxn, tenant: str, credit_type: str, now: datetime) -> Amount:
    """Log the type's state for followers; the balance after the change."""
    state = type_balance(txn.sql, tenant, credit_type, now)
    body = state.feed(tenant)
    txn.upsert(
        CREDIT_STATES,
        {"tenant": tenant, "credit_type": credit_type, "body": json.dumps(body)},
        "tenant, credit_type",
    )
    txn.append(tenant, "credits", "upsert", body)
    return state.balance


def _entry(
    sql: Sql,
    tenant: str,
    credit_type: str,
    grant_id: str | None,
    kind: str,
    amount: Amount,
    transaction_id: str | None,
    now: datetime,
) -> int:
    found = sql.execute(
        f"INSERT INTO {CREDIT_ENTRIES} (tenant, credit_type, grant_id, kind, amount, transaction_id, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [tenant, credit_type, grant_id, kind, stored(amount), transaction_id, rfc3339(now)],
    ).fetchone()
    return int(found[0])


def _set_remaining(sql: Sql, grant_id: str, remaining: Amount, state: State) -> None:
    sql.execute(
        f"UPDATE {CREDIT_GRANTS} SET remaining = ?, state = ? WHERE id = ?",
        [stored(remaining), state, grant_id],
    )


def _grant_by_ref(sql: Sql, tenant: str, source: str, source_ref: str) -> Grant | None:
    row = sql.execute(
        f"SELECT {_GRANT_COLUMNS} FROM {CREDIT_GRANTS} WHERE tenant = ? AND source = ? AND source_ref = ?",
        [tenant, source, source_ref],
    ).fetchone()
    return _grant(row) if row else None


def _grant_by_id(sql: Sql, tenant: str, grant_id: str) -> Grant | None:
    row = sql.execute(
        f"SELECT {_GRANT_COLUMNS} FROM {CREDIT_GRANTS} WHERE tenant = ? AND id = ?", [tenant, grant_id]
    ).fetchone()
    return _grant(row) if row else None


def _grant_row(grant: Grant) -> list[Any]:
    return [
        grant.id,
        grant.tenant,
        grant.credit_type,
        stored(grant.amount),
        stored(grant.remaining),
        grant.category,
        grant.priority,
        rfc3339(grant.effective_at),
        rfc3339(grant.expires_at),
        grant.source,
        grant.source_ref,
        grant.state,
        grant.actor,
        grant.reason,
        grant.created,
        grant.created_at,
        grant.external_ref,
    ]


def _grant(row: Sequence[Any]) -> Grant:
    values = list(row)
    effective = parse_rfc3339(values[7])
    assert effective is not None
    return Grant(
        id=str(values[0]),
        tenant=str(values[1]),
        credit_type=str(values[2]),
        amount=from_stored(values[3]),
        remaining=from_stored(values[4]),
        category=values[5],
        priority=int(values[6]),
        effective_at=effective,
        expires_at=parse_rfc3339(values[8]),
        source=values[9],
        source_ref=str(values[10]),
        state=values[11],
        actor=values[12],
        reason=values[13],
        created=int(values[14]),
        created_at=str(values[15]),
        external_ref=values[16],
    )
