"""Leases in the mirror: one exchange with a holder is one transaction under the pool's lock.

The lock is `MirrorTxn.lock("lease", ...)`: an advisory lock per (tenant, metric, window) on
PostgreSQL, so two daemons sharing the mirror serialize their grants; SQLite has one writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import Decimal

from tiergate.sync_daemon.leases.sizing import Ask, Lease, free_units, grant_size, released, reported
from tiergate.sync_daemon.mirror.schema import LEASES, USAGE
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql


@dataclass(frozen=True, slots=True)
class Pool:
    tenant: str
    code: str
    window: str  # the usage period's start the counter is kept under

    @property
    def key(self) -> str:
        return f"{self.tenant}\x1f{self.code}\x1f{self.window}"


@dataclass(frozen=True, slots=True)
class Granted:
    """The holder's lease after the exchange (cumulative `granted`), and the pool's state."""

    granted: int
    acked: int
    added: int
    free: int
    holders: int
    expired: int


def counted(sql: Sql, pool: Pool) -> int:
    row = sql.execute(
        f"SELECT value FROM {USAGE} WHERE tenant = ? AND code = ? AND period_start = ?",
        [pool.tenant, pool.code, pool.window],
    ).fetchone()
    return 0 if row is None else math.ceil(Decimal(str(row[0])))


def leases(sql: Sql, pool: Pool) -> list[Lease]:
    rows = sql.execute(
        f"SELECT holder, granted, acked, rate, expires_at FROM {LEASES} "
        "WHERE tenant = ? AND code = ? AND window_start = ?",
        [pool.tenant, pool.code, pool.window],
    ).fetchall()
    return [Lease(str(h), int(g), int(a), float(r), float(e)) for h, g, a, r, e in rows]


def exchange(txn: MirrorTxn, pool: Pool, ask: Ask, limit: int, now: float, ttl_s: float) -> Granted:
    """Report, renew and maybe grant (or release), keeping counted + held <= limit."""
    txn.lock("lease", pool.key)
    everyone = leases(txn.sql, pool)
    expired = [lease for lease in everyone if lease.expires_at <= now]
    live = {lease.holder: lease for lease in everyone if lease.expires_at > now}
    mine = live.pop(ask.holder, None) or Lease(ask.holder, 0, 0, 0.0, now + ttl_s)
    mine = reported(mine, ask, ask.rate, now + ttl_s)
    if ask.release:
        mine = released(mine, ask)
    free = free_units(limit, counted(txn.sql, pool), [*live.values(), mine])
    added = 0 if ask.release else grant_size(free, ask, [*(lease.rate for lease in live.values()), mine.rate])
    mine = replace(mine, granted=mine.granted + added)
    _delete(txn, pool, [lease.holder for lease in expired])
    if mine.holds == 0 and (ask.release or mine.granted == 0):
        _delete(txn, pool, [mine.holder])
    else:
        _put(txn, pool, mine)
    return Granted(mine.granted, mine.acked, added, free - added, len(live) + 1, len(expired))


def _put(txn: MirrorTxn, pool: Pool, lease: Lease) -> None:
    txn.write(
        f"INSERT INTO {LEASES} (tenant, code, window_start, holder, granted, acked, rate, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, code, window_start, holder) DO UPDATE SET "
        "granted = excluded.granted, acked = excluded.acked, rate = excluded.rate, "
        "expires_at = excluded.expires_at",
        [pool.tenant, pool.code, pool.window, lease.holder, lease.granted, lease.acked, lease.rate,
         lease.expires_at],
    )  # fmt: skip


def _delete(txn: MirrorTxn, pool: Pool, holders: list[str]) -> None:
    for holder in holders:
        txn.write(
            f"DELETE FROM {LEASES} WHERE tenant = ? AND code = ? AND window_start = ? AND holder = ?",
            [pool.tenant, pool.code, pool.window, holder],
        )


def outstanding(sql: Sql, tenant: str, now: float) -> list[dict[str, object]]:
    """The tenant's live leases (GET /v1/leases/{tenant})."""
    rows = sql.execute(
        f"SELECT code, window_start, holder, granted, acked, rate, expires_at FROM {LEASES} "
        "WHERE tenant = ? AND expires_at > ? ORDER BY code, window_start, holder",
        [tenant, now],
    ).fetchall()
    return [
        {"code": c, "window": w, "holder": h, "holds": max(0, int(g) - int(a)), "granted": int(g),
         "acked": int(a), "rate": float(r), "expires_in_s": round(float(e) - now, 3)}
        for c, w, h, g, a, r, e in rows
    ]  # fmt: skip


def totals(sql: Sql, now: float) -> tuple[int, int]:
    """(live leases, units they hold) across every tenant: the daemon's gauges."""
    row = sql.execute(
        f"SELECT COUNT(*), COALESCE(SUM(granted - acked), 0) FROM {LEASES} WHERE expires_at > ?", [now]
    ).fetchone()
    return int(row[0]), int(row[1])
