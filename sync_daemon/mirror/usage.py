"""Usage in the daemon's mirror: idempotent ingest into per-period counters, and the usage reads.

`ingest_events` runs inside `Mirror.transact`: the events, the counters they change and one
change-log entry per changed counter commit together, so a follower sees a counter exactly when
the events behind it are recorded (and a replayed transaction id changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync_daemon.mirror.schema import ACCOUNTS, USAGE, USAGE_EVENTS, USAGE_PERIODS
from sync_daemon.mirror.store import MirrorTxn, Sql
from sync_daemon.usage_query import EventQuery
from sync_daemon.usage_query import stored_time as _iso
from tiergate import exact_json
from tiergate.amounts import Amount, add, from_stored, stored
from tiergate.feed import usage_record
from tiergate.models import Account
from tiergate.periods import parse_rfc3339, rfc3339
from tiergate.usage_events import GAUGE_PERIOD_START, ValidEvent, aggregate, event_period

Key = tuple[str, str, str]  # (tenant, code, period_start)


@dataclass(frozen=True)
class IngestResult:
    inserted: list[bool]  # per event, in order: False = a transaction id already ingested
    counters: dict[Key, Amount]  # the new exact value of each counter this batch changed


def ingest_events(txn: MirrorTxn, events: Sequence[ValidEvent], received_at: datetime) -> IngestResult:
    conn = txn.sql
    # Stored events are numbered max(seq) + 1: one ingest at a time from here to commit, so seqs
    # commit in order (a sink's cursor never passes an event that commits later) on any backend.
    # The lock makes the batch's reads and writes few: which ids are stored (one query per
    # _CHUNK ids), then the new events in multi-row INSERTs (on PostgreSQL each statement is a
    # round trip, held under this lock).
    txn.lock("usage_events", "seq")
    periods = _Periods(txn, conn)
    known = _stored_keys(conn, events)
    first_seq = int(conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM {USAGE_EVENTS}").fetchone()[0])
    inserted: list[bool] = []
    rows: list[tuple[Any, ...]] = []
    deltas: list[tuple[Key, Amount]] = []
    readings: dict[Key, ValidEvent] = {}  # gauges: the newest reading of each in this batch
    received = _iso(received_at)
    for event in events:
        fresh = (event.tenant, event.transaction_id) not in known
        inserted.append(fresh)
        if not fresh:
            continue
        known.add((event.tenant, event.transaction_id))  # the same id twice in a batch counts once
        period_start = GAUGE_PERIOD_START if event.gauge else rfc3339(periods.of(event)[0]) or ""
        rows.append(_event_row(event, period_start, received, first_seq + len(rows)))
        key = (event.tenant, event.code, period_start)
        if event.gauge:
            if key not in readings or event.at >= readings[key].at:
                readings[key] = event
        else:
            deltas.append((key, event.value))
            periods.remember(event)
    _insert_events(conn, rows)
    counters = {key: _add(txn, conn, key, delta) for key, delta in aggregate(deltas).items() if delta}
    for key, reading in readings.items():
        if _set_gauge(txn, conn, key, reading):
            counters[key] = reading.value
    return IngestResult(inserted, counters)


_CHUNK = 200  # ids per lookup, events per INSERT (11 parameters each: far below both backends' limits)
_EVENT_COLUMNS = (
    "tenant, transaction_id, code, timestamp, period_start, value, body, received_at, "
    "external_subscription_id, document, seq"
)


def _stored_keys(conn: Sql, events: Sequence[ValidEvent]) -> set[tuple[str, str]]:
    """The (tenant, transaction id) pairs of `events` already stored (by the transaction-id index)."""
    ids = sorted({event.transaction_id for event in events})
    found: set[tuple[str, str]] = set()
    for at in range(0, len(ids), _CHUNK):
        chunk = ids[at : at + _CHUNK]
        rows = conn.execute(
            f"SELECT tenant, transaction_id FROM {USAGE_EVENTS} "
            f"WHERE transaction_id IN ({', '.join('?' for _ in chunk)})",
            chunk,
        ).fetchall()
        found.update((str(tenant), str(tid)) for tenant, tid in rows)
    return found


def _event_row(event: ValidEvent, period_start: str, received: str, seq: int) -> tuple[Any, ...]:
    return (
        event.tenant,
        event.transaction_id,
        event.code,
        _iso(event.at),
        period_start,
        stored(event.value),
        exact_json.dumps(event.properties).decode(),
        received,
        event.external_subscription_id,
        exact_json.dumps(event.lago()).decode(),
        seq,
    )


def _insert_events(conn: Sql, rows: Sequence[tuple[Any, ...]]) -> None:
    """Plain INSERTs: under the ingest lock a stored id was looked up above, so a conflict here
    would be a bug, and it fails the transaction instead of being skipped."""
    marks = "(" + ", ".join("?" for _ in range(11)) + ")"
    for at in range(0, len(rows), _CHUNK):
        chunk = rows[at : at + _CHUNK]
        conn.execute(
            f"INSERT INTO {USAGE_EVENTS} ({_EVENT_COLUMNS}) VALUES {', '.join(marks for _ in chunk)}",
            [value for row in chunk for value in row],
        )


def _set_gauge(txn: MirrorTxn, conn: Sql, key: Key, reading: ValidEvent) -> bool:
    """A gauge takes the reading unless it holds a newer one (by event timestamp; on a tie, the
    one ingested last wins). Returns whether it changed."""
    tenant, code, period_start = key
    at = _iso(reading.at)
    row = conn.execute(
        f"SELECT gauge_at FROM {USAGE} WHERE tenant = ? AND code = ? AND period_start = ?",
        (tenant, code, period_start),
    ).fetchone()
    if row is not None and row[0] is not None and row[0] > at:
        return False  # an older reading that arrived late
    conn.execute(
        f"INSERT INTO {USAGE} (tenant, code, period_start, value, gauge_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (tenant, code, period_start) DO UPDATE SET value = excluded.value, "
        "gauge_at = excluded.gauge_at",
        (tenant, code, period_start, stored(reading.value), at),
    )
    txn.append(tenant, "usage", "upsert", usage_record(tenant, code, period_start, reading.value, at))
    return True


def _add(txn: MirrorTxn, conn: Sql, key: Key, delta: Amount) -> Amount:
    """Add exactly, in Python: neither SQLite (REAL) nor a shared statement can add decimals
    exactly on both backends. Safe as read-then-write: ingest holds the usage_events lock."""
    tenant, code, period_start = key
    row = conn.execute(
        f"SELECT value FROM {USAGE} WHERE tenant = ? AND code = ? AND period_start = ?",
        (tenant, code, period_start),
    ).fetchone()
    value = add(from_stored(row[0]) if row is not None else 0, delta)
    conn.execute(
        f"INSERT INTO {USAGE} (tenant, code, period_start, value) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (tenant, code, period_start) DO UPDATE SET value = excluded.value",
        (tenant, code, period_start, stored(value)),
    )
    body = usage_record(tenant, code, period_start, value)  # whole units for old sidecars, and exact
    txn.append(tenant, "usage", "upsert", body)
    return value


class _Periods:
    """Per-batch cache: each tenant's account, and its recorded periods when a late event needs them."""

    def __init__(self, txn: MirrorTxn, conn: Sql) -> None:
        self._txn = txn
        self._conn = conn
        self._accounts: dict[str, Account | None] = {}
        self._recorded: dict[str, list[tuple[datetime, datetime]]] = {}
        self._remembered: set[tuple[str, datetime]] = set()

    def of(self, event: ValidEvent) -> tuple[datetime, datetime]:
        account = self.account(event.tenant)
        start = account.current_period_start if account else None
        recorded = self._load(event.tenant) if start is None or event.at < start else ()
        return event_period(account, event.at, recorded)

    def account(self, tenant: str) -> Account | None:
        if tenant not in self._accounts:
            found = self._txn.account(tenant)
            self._accounts[tenant] = (
                Account(
                    tenant=tenant,
                    tier=found.tier,
                    status=found.status,
                    current_period_start=found.current_period_start,
                    current_period_end=found.current_period_end,
                )
                if found is not None
                else None
            )
        return self._accounts[tenant]

    def remember(self, event: ValidEvent) -> None:
        """Record the subscription period the event counted in (calendar months need no record)."""
        account = self.account(event.tenant)
        if account is None or account.current_period_start is None or event.at < account.current_period_start:
            return
        start, end = event_period(account, event.at)
        if (event.tenant, start) in self._remembered:
            return
        self._remembered.add((event.tenant, start))
        self._conn.execute(
            f"INSERT INTO {USAGE_PERIODS} (tenant, period_start, period_end) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (event.tenant, rfc3339(start), rfc3339(end)),
        )
        self._recorded.pop(event.tenant, None)

    def _load(self, tenant: str) -> list[tuple[datetime, datetime]]:
        if tenant not in self._recorded:
            rows = self._conn.execute(
                f"SELECT period_start, period_end FROM {USAGE_PERIODS} WHERE tenant = ? "
                "ORDER BY period_start DESC",
                (tenant,),
            ).fetchall()
            self._recorded[tenant] = [(_time(s), _time(e)) for s, e in rows]
        return self._recorded[tenant]


# -- reads (on Mirror.read connections, either backend) -----------------------------------------------------------


def tenant_usage(conn: Sql, tenant: str, now: datetime) -> dict[str, Any]:
    """The tenant's current period and its counters, plus every counter the mirror keeps."""
    found = conn.execute(
        f"SELECT tier, status, current_period_start, current_period_end FROM {ACCOUNTS} WHERE tenant = ?",
        (tenant,),
    ).fetchone()
    account = (
        Account(
            tenant=tenant,
            tier=found[0],
            status=found[1],
            current_period_start=parse_rfc3339(found[2]),
            current_period_end=parse_rfc3339(found[3]),
        )
        if found
        else None
    )
    start, end = event_period(account, now)
    period_start = rfc3339(start)
    rows = conn.execute(
        f"SELECT code, period_start, value FROM {USAGE} WHERE tenant = ? ORDER BY period_start DESC, code",
        (tenant,),
    ).fetchall()
    return {
        "tenant": tenant,
        "tier": account.tier if account else None,
        "period": {"start": period_start, "end": rfc3339(end)},
        "usage": {
            code: stored(from_stored(value))
            for code, p, value in rows
            if p in (period_start, GAUGE_PERIOD_START)
        },
        "counters": [{"code": c, "period_start": p, "value": stored(from_stored(v))} for c, p, v in rows],
    }


EVENT_COLUMNS = (
    "seq, tenant, transaction_id, code, timestamp, period_start, value, body, received_at, "
    "external_subscription_id, document"
)


def stored_event(row: Sequence[Any]) -> dict[str, Any]:
    """A stored event: Lago's document as sent, plus what tiergate decided about it."""
    seq, tenant, tid, code, timestamp, period_start, value, body, received_at, subscription, document = row
    lago: dict[str, Any] = (
        exact_json.loads(document)
        if document is not None
        else {
            "transaction_id": tid,
            "external_customer_id": tenant,
            "code": code,
            "properties": exact_json.loads(body),
        }
    )
    if subscription is not None:
        lago.setdefault("external_subscription_id", subscription)
    return {
        **lago,
        "tenant": tenant,
        "occurred_at": timestamp,
        "period_start": period_start,
        "value": stored(from_stored(value)),  # a decimal as a string, like Lago's `units`
        "received_at": received_at,
        "seq": seq,
    }


def find_event(conn: Sql, transaction_id: str, tenant: str | None) -> dict[str, Any] | None:
    """The newest ingested event with this transaction id (of `tenant` when given), Lago-shaped."""
    sql = f"SELECT {EVENT_COLUMNS} FROM {USAGE_EVENTS} WHERE transaction_id = ?"
    params: list[str] = [transaction_id]
    if tenant is not None:
        sql += " AND tenant = ?"
        params.append(tenant)
    row = conn.execute(sql + " ORDER BY received_at DESC LIMIT 1", params).fetchone()
    return stored_event(row) if row is not None else None


def list_events(conn: Sql, query: EventQuery) -> tuple[list[dict[str, Any]], int | None]:
    """One page of stored events in ingest order, and the seq to continue after (None: the last page)."""
    sql = f"SELECT {EVENT_COLUMNS} FROM {USAGE_EVENTS} WHERE seq > ?"
    params: list[str | int] = [query.after_seq]
    for clause, value in (
        ("tenant = ?", query.tenant),
        ("code = ?", query.code),
        ("timestamp >= ?", query.occurred_from),
        ("timestamp < ?", query.occurred_to),
    ):
        if value is not None:
            sql += f" AND {clause}"
            params.append(value)
    rows = conn.execute(sql + " ORDER BY seq LIMIT ?", [*params, query.limit + 1]).fetchall()
    page = [stored_event(row) for row in rows[: query.limit]]
    return page, (page[-1]["seq"] if len(rows) > query.limit else None)


def _time(text: str) -> datetime:
    moment = parse_rfc3339(text)
    assert moment is not None
    return moment
