"""Usage in the daemon's mirror: idempotent ingest into per-period counters, and the usage reads.

`ingest_events` runs inside `Mirror.transact`: the events, the counters they change and one
change-log entry per changed counter commit together, so a follower sees a counter exactly when
the events behind it are recorded (and a replayed transaction id changes nothing). Stored events
get their `seq` (the sinks' and the listing's order) after they commit, from
`number_stored_events` (docs/adr/0021-usage-events-numbered-after-commit.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from tiergate import exact_json
from tiergate.amounts import Amount, add, from_stored, stored
from tiergate.catalog import Catalog
from tiergate.feed import usage_record
from tiergate.models import Account
from tiergate.periods import parse_rfc3339, rfc3339
from tiergate.sync_daemon.mirror.schema import ACCOUNTS, USAGE, USAGE_EVENTS, USAGE_PERIODS
from tiergate.sync_daemon.mirror.store import Mirror, MirrorTxn, Sql
from tiergate.sync_daemon.usage_query import EventQuery
from tiergate.sync_daemon.usage_query import stored_time as _iso
from tiergate.usage_events import GAUGE_PERIOD_START, ValidEvent, aggregate, event_period

Key = tuple[str, str, str]  # (tenant, code, period_start)
EventKey = tuple[str, str]  # (tenant, transaction_id): the idempotency key


@dataclass(frozen=True)
class IngestResult:
    inserted: list[bool]  # per event, in order: False = a transaction id already ingested
    counters: dict[Key, Amount]  # the new exact value of each counter this batch changed


def ingest_events(
    txn: MirrorTxn, events: Sequence[ValidEvent], received_at: datetime, catalog: Catalog | None = None
) -> IngestResult:
    """Store the batch's new events and count exactly those this transaction stored.

    No lock spans the batch: ingests on every daemon run side by side and meet only on a row they
    share (a transaction id, a counter) and at the change feed's commit. On PostgreSQL the events
    get their seq after commit (`number_stored_events`); SQLite's one writer numbers them here.
    Each statement covers the whole batch, so a batch is a handful of round trips. With
    `catalog`, a metric with its own `window` counts in that window, not the billing period.
    """
    periods = _Periods(txn, {event.tenant for event in events})
    received = _receipt_times(received_at, len(events))
    first: dict[EventKey, int] = {}  # each id's first place in the batch: a repeat in it counts once
    rows: dict[EventKey, tuple[Any, ...]] = {}
    placed: list[tuple[ValidEvent, str]] = []
    for index, event in enumerate(events):
        key = (event.tenant, event.transaction_id)
        if key in first:
            continue
        first[key] = index
        window = catalog.usage_window(event.code, event.at) if catalog is not None else None
        period_start = GAUGE_PERIOD_START if event.gauge else rfc3339((window or periods.of(event))[0]) or ""
        rows[key] = _event_row(event, period_start, received[index])
        placed.append((event, period_start))
    if txn.concurrent:
        # In key order: two batches sharing ids take their row locks in the same order (no deadlock).
        stored_now = _insert_new(txn.sql, [rows[key] for key in sorted(rows)])
    else:
        stored_now = _insert_numbered(txn.sql, rows)
    inserted = [
        first[(e.tenant, e.transaction_id)] == i and (e.tenant, e.transaction_id) in stored_now
        for i, e in enumerate(events)
    ]
    deltas: list[tuple[Key, Amount]] = []
    readings: dict[Key, ValidEvent] = {}  # gauges: the newest reading of each in this batch
    for event, period_start in placed:
        if (event.tenant, event.transaction_id) not in stored_now:
            continue
        counter = (event.tenant, event.code, period_start)
        if event.gauge:
            if counter not in readings or event.at >= readings[counter].at:
                readings[counter] = event
        else:
            deltas.append((counter, event.value))
            if catalog is None or catalog.usage_window(event.code, event.at) is None:
                periods.remember(event)  # a window of its own is not a subscription period
    periods.record()
    counters = _add_all(txn, {counter: delta for counter, delta in aggregate(deltas).items() if delta})
    counters.update(_set_gauges(txn, readings))
    return IngestResult(inserted, counters)


def _receipt_times(received_at: datetime, count: int) -> list[str]:
    """A batch's events are received one microsecond apart, in their order: the order they get
    their seqs in (by `received_at`, then the key, for batches received at the same moment)."""
    first = _iso(received_at)
    if received_at.microsecond + count > 999_999:  # rare: the batch straddles a second
        return [_iso(received_at + timedelta(microseconds=i)) for i in range(count)]
    head, start = first[:-7], received_at.microsecond  # "…:SS." of "…:SS.ffffffZ"
    return [f"{head}{start + i:06d}Z" for i in range(count)]


_CHUNK = 200  # rows per SQLite statement (at most 11 parameters each: far below its limit)
_EVENT_COLUMNS = (
    "tenant, transaction_id, code, timestamp, period_start, value, body, received_at, "
    "external_subscription_id, document"
)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    return (items[at : at + _CHUNK] for at in range(0, len(items), _CHUNK))


def _values(width: int, count: int) -> str:
    row = "(" + ", ".join("?" for _ in range(width)) + ")"
    return ", ".join(row for _ in range(count))


def _event_row(event: ValidEvent, period_start: str, received: str) -> tuple[Any, ...]:
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
    )


# PostgreSQL's statements take the whole batch as one parameter (a JSON array of rows, or one
# array per column): a short statement that psycopg parses once and PostgreSQL prepares, whatever
# the batch size. (A multi-row VALUES of a thousand placeholders is too long for psycopg's cache:
# it was parsed again on every call, the largest part of the daemon's CPU per event; arrays of
# JSON documents cost psycopg a regex escape per element.)
_EVENT_TYPES = (
    "tenant text, transaction_id text, code text, timestamp text, period_start text, value numeric, "
    "body text, received_at text, external_subscription_id text, document text"
)
_EVENT_NAMES = [column.strip() for column in _EVENT_COLUMNS.split(",")]
_NEW_EVENTS = (
    f"INSERT INTO {USAGE_EVENTS} ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} "
    f"FROM json_to_recordset(?::json) AS batch({_EVENT_TYPES}) "
    "ON CONFLICT DO NOTHING RETURNING tenant, transaction_id"
)
_TEXT = "?::text[]"
_ADD = (
    f"INSERT INTO {USAGE} (tenant, code, period_start, value) "
    f"SELECT * FROM unnest({_TEXT}, {_TEXT}, {_TEXT}, ?::numeric[]) "
    f"ON CONFLICT (tenant, code, period_start) DO UPDATE SET value = {USAGE}.value + excluded.value "
    "RETURNING tenant, code, period_start, value"
)


def _columns(rows: Sequence[tuple[Any, ...]], numeric: int) -> list[list[Any]]:
    """The rows as one list per column; the `numeric` column as text (parsed exactly by PostgreSQL)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    columns[numeric] = [str(value) for value in columns[numeric]]
    return columns


def _insert_new(conn: Sql, rows: Sequence[tuple[Any, ...]]) -> set[EventKey]:
    """Several writers (PostgreSQL): insert the rows whose (tenant, transaction id) is not stored
    yet; the keys inserted. `ON CONFLICT DO NOTHING` decides under the primary key: an insert of
    an id another transaction is inserting waits for it, then skips the row if it committed
    (counted there) or inserts it if it rolled back. `seq` stays NULL until `number_stored_events`.
    """
    if not rows:
        return set()
    # `value` as text: PostgreSQL reads it into numeric exactly.
    batch = orjson.dumps(
        [dict(zip(_EVENT_NAMES, (*row[:5], str(row[5]), *row[6:]), strict=True)) for row in rows]
    )
    return set(conn.execute(_NEW_EVENTS, [batch.decode()]).fetchall())


def _insert_numbered(conn: Sql, rows: dict[EventKey, tuple[Any, ...]]) -> set[EventKey]:
    """One writer (SQLite): transactions commit in the order they run, so the new rows take their
    seqs here, in batch order, from `max(seq) + 1` (what numbering after commit would give them).
    Which ids are stored is one lookup per `_CHUNK` ids; the new rows, multi-row `INSERT`s."""
    known: set[EventKey] = set()
    ids = sorted({tid for _, tid in rows})
    for chunk in _chunks(ids):
        known.update(
            conn.execute(
                f"SELECT tenant, transaction_id FROM {USAGE_EVENTS} "
                f"WHERE transaction_id IN ({', '.join('?' for _ in chunk)})",
                list(chunk),
            ).fetchall()
        )
    fresh = [key for key in rows if key not in known]
    top = int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {USAGE_EVENTS}").fetchone()[0])
    numbered = [(*rows[key], top + n) for n, key in enumerate(fresh, start=1)]
    for chunk in _chunks(numbered):
        conn.execute(
            f"INSERT INTO {USAGE_EVENTS} ({_EVENT_COLUMNS}, seq) VALUES {_values(11, len(chunk))}",
            [value for row in chunk for value in row],
        )
    return set(fresh)


def _add_all(txn: MirrorTxn, deltas: dict[Key, Amount]) -> dict[Key, Amount]:
    """Add each delta to its counter exactly; the new values, each also logged for the feed.

    With concurrent writers (PostgreSQL) one statement adds in the database (`numeric` is exact)
    and holds each counter's row lock to commit, taken in key order; with one writer (SQLite,
    where `value` is an int or a decimal's text) the values are read, added in Python, written.
    """
    keys = sorted(deltas)
    values = _add_in_sql(txn.sql, keys, deltas) if txn.concurrent else _add_in_python(txn.sql, keys, deltas)
    for key in keys:
        tenant, code, period_start = key
        txn.append(tenant, "usage", "upsert", usage_record(tenant, code, period_start, values[key]))
    return {key: values[key] for key in keys}


_UPSERT = f"INSERT INTO {USAGE} (tenant, code, period_start, value) VALUES "


def _add_in_sql(conn: Sql, keys: Sequence[Key], deltas: dict[Key, Amount]) -> dict[Key, Amount]:
    if not keys:
        return {}
    found = conn.execute(_ADD, _columns([(*key, stored(deltas[key])) for key in keys], 3)).fetchall()
    return {(t, c, p): from_stored(v) for t, c, p, v in found}


def _add_in_python(conn: Sql, keys: Sequence[Key], deltas: dict[Key, Amount]) -> dict[Key, Amount]:
    values: dict[Key, Amount] = {}
    for chunk in _chunks(keys):
        current = {
            (t, c, p): from_stored(v)
            for t, c, p, v in conn.execute(
                f"SELECT tenant, code, period_start, value FROM {USAGE} "
                f"WHERE (tenant, code, period_start) IN (VALUES {_values(3, len(chunk))})",
                [v for key in chunk for v in key],
            ).fetchall()
        }
        for key in chunk:
            values[key] = add(current.get(key, 0), deltas[key])
        conn.execute(
            _UPSERT + _values(4, len(chunk)) + " ON CONFLICT (tenant, code, period_start) "
            "DO UPDATE SET value = excluded.value",
            [v for key in chunk for v in (*key, stored(values[key]))],
        )
    return values


def _set_gauges(txn: MirrorTxn, readings: dict[Key, ValidEvent]) -> dict[Key, Amount]:
    """Each gauge takes its reading unless it holds a newer one (by event timestamp; on a tie, the
    one ingested last wins), in one statement per chunk. Returns the gauges that changed."""
    changed: dict[Key, Amount] = {}
    keys = sorted(readings)
    for chunk in _chunks(keys):
        found = txn.sql.execute(
            f"INSERT INTO {USAGE} (tenant, code, period_start, value, gauge_at) VALUES {_values(5, len(chunk))} "
            "ON CONFLICT (tenant, code, period_start) DO UPDATE SET value = excluded.value, "
            f"gauge_at = excluded.gauge_at WHERE {USAGE}.gauge_at IS NULL OR {USAGE}.gauge_at <= excluded.gauge_at "
            "RETURNING tenant, code, period_start",
            [v for key in chunk for v in (*key, stored(readings[key].value), _iso(readings[key].at))],
        ).fetchall()
        changed.update(((t, c, p), readings[(t, c, p)].value) for t, c, p in found)
    for key in keys:
        if key in changed:
            tenant, code, period_start = key
            at = _iso(readings[key].at)
            txn.append(tenant, "usage", "upsert", usage_record(tenant, code, period_start, changed[key], at))
    return changed


# -- numbering stored events, after they commit (ADR 21) ----------------------------------------------------------

NUMBERING_BATCH = 5000


def number_stored_events(txn: MirrorTxn, limit: int = NUMBERING_BATCH) -> int:
    """Give the committed events that have no seq yet the next seqs; returns how many.

    One numbering transaction at a time (the lock is held to its commit), each reading `max(seq)`
    after taking it: every number handed out is above every number already visible, so a reader in
    seq order never passes an event that commits later (it has no number yet when read).
    """
    txn.lock("usage_events", "seq")
    if txn.sql.execute(f"SELECT 1 FROM {USAGE_EVENTS} WHERE seq IS NULL LIMIT 1").fetchone() is None:
        return 0  # the common case when caught up, and SQLite's (numbered at insert): by the seq index
    top = int(txn.sql.execute(f"SELECT coalesce(max(seq), 0) FROM {USAGE_EVENTS}").fetchone()[0])
    cursor = txn.sql.execute(
        f"UPDATE {USAGE_EVENTS} SET seq = ? + numbered.n FROM ("
        "SELECT tenant AS t, transaction_id AS x, "
        "row_number() OVER (ORDER BY received_at, tenant, transaction_id) AS n "
        f"FROM {USAGE_EVENTS} WHERE seq IS NULL ORDER BY received_at, tenant, transaction_id LIMIT ?"
        f") AS numbered WHERE {USAGE_EVENTS}.tenant = numbered.t AND {USAGE_EVENTS}.transaction_id = numbered.x",
        [top, limit],
    )
    return max(int(cursor.rowcount), 0)


async def number_all_stored_events(mirror: Mirror) -> int:
    """Number every committed event still without a seq, `NUMBERING_BATCH` per transaction."""
    total = 0
    while True:
        done = await mirror.transact(number_stored_events)
        total += done
        if done < NUMBERING_BATCH:
            return total


class _Periods:
    """Per-batch cache: the batch's accounts (one read, no tenant lock: ingest never writes an
    account), each tenant's recorded periods when a late event needs them, the periods to record."""

    def __init__(self, txn: MirrorTxn, tenants: set[str]) -> None:
        self._conn = txn.sql
        self._accounts = _accounts(txn, sorted(tenants))
        self._recorded: dict[str, list[tuple[datetime, datetime]]] = {}
        self._remembered: dict[tuple[str, datetime], datetime] = {}

    def of(self, event: ValidEvent) -> tuple[datetime, datetime]:
        account = self._accounts.get(event.tenant)
        start = account.current_period_start if account else None
        recorded = self._load(event.tenant) if start is None or event.at < start else ()
        return event_period(account, event.at, recorded)

    def remember(self, event: ValidEvent) -> None:
        """The subscription period the event counted in is to be recorded (calendar months need none)."""
        account = self._accounts.get(event.tenant)
        if account is None or account.current_period_start is None or event.at < account.current_period_start:
            return
        start, end = event_period(account, event.at)
        self._remembered.setdefault((event.tenant, start), end)

    def record(self) -> None:
        rows = sorted(self._remembered.items())
        for chunk in _chunks(rows):
            self._conn.execute(
                f"INSERT INTO {USAGE_PERIODS} (tenant, period_start, period_end) VALUES {_values(3, len(chunk))} "
                "ON CONFLICT DO NOTHING",
                [v for (tenant, start), end in chunk for v in (tenant, rfc3339(start), rfc3339(end))],
            )

    def _load(self, tenant: str) -> list[tuple[datetime, datetime]]:
        if tenant not in self._recorded:
            rows = self._conn.execute(
                f"SELECT period_start, period_end FROM {USAGE_PERIODS} WHERE tenant = ? "
                "ORDER BY period_start DESC",
                (tenant,),
            ).fetchall()
            self._recorded[tenant] = [(_time(s), _time(e)) for s, e in rows]
        return self._recorded[tenant]


def _accounts(txn: MirrorTxn, tenants: Sequence[str]) -> dict[str, Account]:
    found: dict[str, Account] = {}
    columns = f"SELECT tenant, tier, status, current_period_start, current_period_end FROM {ACCOUNTS} "
    for chunk in [tenants] if txn.concurrent else _chunks(tenants):
        rows = (
            txn.sql.execute(columns + "WHERE tenant = ANY(?::text[])", [list(chunk)])
            if txn.concurrent  # one short statement for any number of tenants (see _NEW_EVENTS)
            else txn.sql.execute(columns + f"WHERE tenant IN ({', '.join('?' for _ in chunk)})", list(chunk))
        ).fetchall()
        for tenant, tier, status, start, end in rows:
            found[str(tenant)] = Account(
                tenant=str(tenant),
                tier=tier,
                status=status,
                current_period_start=parse_rfc3339(start),
                current_period_end=parse_rfc3339(end),
            )
    return found


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
