"""The mirror port: the rows it keeps (accounts, customers), one write transaction's API, and `Mirror`.

Two adapters implement the port with the same behaviour: `SqliteMirror` (one file, one writer
thread; the embedded default) and `PostgresMirror` (several daemons on one database). A write is
a plain function of a `MirrorTxn`, run in one transaction by the adapter (and re-run by it when
PostgreSQL reports a serialization failure or a deadlock), so every caller's logic is shared.
Every change followers must see is appended through the transaction and gets its feed position
when the transaction commits (SQLite, docs/adr/0013-gap-free-change-feed.md) or right after
(PostgreSQL, docs/adr/0020-feed-numbered-after-commit.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from tiergate.models import ACCOUNT_FIELDS, ENDED_STATUSES
from tiergate.periods import parse_rfc3339, rfc3339, utc_now_text
from tiergate.sync_daemon.mirror.schema import ACCOUNT_VERSIONS, ACCOUNTS, CUSTOMERS, EVENTS

T = TypeVar("T")


class Cursor(Protocol):
    """What both drivers' cursors offer (DB-API)."""

    @property
    def description(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int) -> list[Any]: ...


class Sql(Protocol):
    """A connection that runs one statement with `?` placeholders (both adapters accept this form)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


def column_names(cursor: Cursor) -> list[str]:
    return [str(d[0]) for d in cursor.description]


FEED_FIELDS = ACCOUNT_FIELDS
_TIMES = frozenset(
    {"current_period_start", "current_period_end", "trial_end", "canceled_at", "past_due_since", "pending_at"}
)
_FLAGS = frozenset({"cancel_at_period_end", "needs_reconcile", "unmapped_price"})


@dataclass(frozen=True)
class MirrorAccount:
    """One tenant's row in the mirror (a superset of the feed's Account)."""

    tenant: str
    tier: str
    status: str
    stripe_customer_id: str | None = None
    subscription_id: str | None = None
    interval: str | None = None
    quantity: int = 1
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    past_due_since: datetime | None = None
    payment_attempts: int = 0
    payment_updated: int = 0  # `created` of the newest invoice event applied
    stripe_updated: int = 0  # `created` of the newest subscription state applied
    needs_reconcile: bool = False
    unmapped_price: bool = False
    version: int = 0
    pending_tier: str | None = None  # a scheduled downgrade (billing actions), until it takes effect
    pending_interval: str | None = None
    pending_at: datetime | None = None
    # Extra subscription items that are catalog add-ons: (add-on, quantity), sorted by add-on.
    addons: tuple[tuple[str, int], ...] = ()

    def replace(self, **changes: Any) -> MirrorAccount:
        return dataclasses.replace(self, **changes)

    def settled(self) -> MirrorAccount:
        """Drop a pending change that took effect or can no longer happen.

        Webhooks and reconciliation rewrite the subscription's fields but know nothing of
        schedules; this is where a downgrade that has started (or a subscription that ended)
        stops being shown as pending.
        """
        if self.pending_tier is None:
            return self
        arrived = self.tier == self.pending_tier and self.pending_interval in (None, self.interval)
        if arrived or self.status in ENDED_STATUSES:  # ended: a pending change on it is void
            return self.replace(pending_tier=None, pending_interval=None, pending_at=None)
        return self

    def feed(self) -> dict[str, Any]:
        """The Account document followers receive (exactly tiergate.models.Account's fields)."""
        row = self.row()
        row["addons"] = dict(self.addons)
        return {name: (bool(row[name]) if name in _FLAGS else row[name]) for name in FEED_FIELDS}

    def feed_equal(self, other: MirrorAccount | None) -> bool:
        return other is not None and {**self.feed(), "version": 0} == {**other.feed(), "version": 0}

    def row(self) -> dict[str, Any]:
        # A shallow copy: every field is immutable, and asdict's deep copy dominated snapshots.
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _TIMES:
            row[name] = rfc3339(row[name])
        for name in _FLAGS:
            row[name] = int(row[name])
        row["addons"] = json.dumps(dict(self.addons)) if self.addons else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MirrorAccount:
        values = dict(row)
        for name in _TIMES:
            values[name] = parse_rfc3339(values[name])
        for name in _FLAGS:
            values[name] = bool(values[name])
        values["addons"] = tuple(sorted(json.loads(values["addons"]).items())) if values.get("addons") else ()
        return cls(**values)


@dataclass(frozen=True)
class CustomerLink:
    customer_id: str
    tenant: str
    deleted_at: int | None = None


@dataclass(frozen=True)
class Cause:
    """What made an account change: a Stripe event, a reconcile run, a billing action (lineage)."""

    kind: str  # "stripe_event", "billing_action", "reconcile" or "unknown"
    event_id: str | None = None
    event_type: str | None = None
    event_at: str | None = None  # RFC 3339: the event's `created`, or when the reconcile run started
    actor: str | None = None

    @classmethod
    def stripe_event(cls, event_id: str, event_type: str, created: int) -> Cause:
        """A webhook, or a billing action's answer from Stripe (applied through the webhook path)."""
        kind = "billing_action" if event_id.startswith(BILLING_ACTION_PREFIX) else "stripe_event"
        return cls(
            kind, event_id, event_type, rfc3339(datetime.fromtimestamp(created, UTC)) if created else None
        )


BILLING_ACTION_PREFIX = "tiergate_action_"
UNKNOWN_CAUSE = Cause("unknown")


class MirrorTxn:
    """Reads and writes inside one write transaction (on the adapter's worker thread only).

    Changes for the feed are buffered in `pending` and written by the adapter at commit, when
    their positions are assigned: a position is never visible before the ones below it.
    """

    # Other transactions may write at the same time (PostgreSQL): a read-then-write of a shared
    # row needs a lock or a single statement. False on SQLite's one writer.
    concurrent = False

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.pending: list[tuple[str, str, str, str | None]] = []  # (tenant, kind, op, body)
        # Accounts this transaction has read or written, by tenant (None: no account): read once,
        # under the tenant's lock, so a read-decide-write (`put_account`) never asks again.
        self._accounts: dict[str, MirrorAccount | None] = {}
        self._customers: dict[str, CustomerLink | None] = {}  # the same for customer links, by customer id
        self.cause = UNKNOWN_CAUSE  # what the account versions this transaction writes are attributed to

    @property
    def appended(self) -> int:
        return len(self.pending)

    def lock(self, kind: str, key: str) -> None:
        """Serialize with other transactions touching the same (kind, key); a no-op on one writer."""

    def locked_read(self, kind: str, key: str, sql: str, params: Sequence[Any]) -> Cursor:
        """`lock(kind, key)`, then `sql`: a read that sees what every earlier holder of the lock committed."""
        self.lock(kind, key)
        return self.sql.execute(sql, params)

    def seen(self, event_id: str, *, customer_id: str | None = None) -> bool:
        """Whether the event was processed (under its lock); with `customer_id`, that customer's
        link is read in the same statement for `customer` (one round trip instead of two)."""
        if customer_id is None or customer_id in self._customers:
            cursor = self.locked_read("event", event_id, f"SELECT 1 FROM {EVENTS} WHERE id = ?", [event_id])
            return cursor.fetchone() is not None
        found = self.locked_read(
            "event",
            event_id,
            f"SELECT EXISTS (SELECT 1 FROM {EVENTS} WHERE id = ?), c.customer_id, c.tenant, c.deleted_at "
            f"FROM (SELECT 1) AS one LEFT JOIN {CUSTOMERS} c ON c.customer_id = ?",
            [event_id, customer_id],
        ).fetchone()
        self._customers[customer_id] = CustomerLink(*found[1:]) if found[1] is not None else None
        return bool(found[0])

    def record_event(self, event_id: str, event_type: str, outcome: str) -> None:
        self.upsert(
            EVENTS,
            {"id": event_id, "type": event_type, "outcome": outcome, "received_at": utc_now_text()},
            "id",
        )

    def account(self, tenant: str) -> MirrorAccount | None:
        """The tenant's account, read once per transaction under the tenant's lock."""
        if tenant not in self._accounts:
            cursor = self.locked_read(
                "tenant", tenant, f"SELECT * FROM {ACCOUNTS} WHERE tenant = ?", [tenant]
            )
            found = cursor.fetchone()
            self._accounts[tenant] = (
                MirrorAccount.from_row(dict(zip(column_names(cursor), found, strict=True))) if found else None
            )
        return self._accounts[tenant]

    def customer(self, customer_id: str) -> CustomerLink | None:
        if customer_id not in self._customers:
            found = self.sql.execute(
                f"SELECT customer_id, tenant, deleted_at FROM {CUSTOMERS} WHERE customer_id = ?",
                [customer_id],
            ).fetchone()
            self._customers[customer_id] = CustomerLink(*found) if found else None
        return self._customers[customer_id]

    def customer_of(self, tenant: str) -> str | None:
        """The tenant's Stripe customer, live ones only (a deleted customer cannot buy again)."""
        found = self.sql.execute(
            f"SELECT customer_id FROM {CUSTOMERS} WHERE tenant = ? AND deleted_at IS NULL LIMIT 1", [tenant]
        ).fetchone()
        return str(found[0]) if found else None

    def link_customer(self, link: CustomerLink) -> None:
        self.upsert(CUSTOMERS, dataclasses.asdict(link), "customer_id")
        self._customers[link.customer_id] = link

    def note_customer_email(self, customer_id: str, email: str | None, at: int) -> bool:
        """Keep a live customer's email as of `at` (an event's `created`, a reconcile's listing
        time) unless a newer one is stored; True when a row took it. One statement, so two writers
        cannot interleave a read and a write."""
        cursor = self.sql.execute(
            f"UPDATE {CUSTOMERS} SET email = ?, email_at = ? WHERE customer_id = ? AND deleted_at IS NULL "
            "AND (email_at IS NULL OR email_at <= ?)",
            [email, at, customer_id, at],
        )
        return cursor.rowcount > 0

    def forget_customer_email(self, customer_id: str, at: int) -> None:
        """A deleted customer's email is personal data the mirror no longer needs: drop it."""
        self.sql.execute(
            f"UPDATE {CUSTOMERS} SET email = NULL, email_at = ? WHERE customer_id = ?", [at, customer_id]
        )

    def put_account(self, account: MirrorAccount) -> MirrorAccount:
        """Store; bump the version and log a change only when what followers see changed."""
        account = account.settled()
        current = self.account(account.tenant)
        version = current.version if current else 0
        if not account.feed_equal(current):
            version += 1
        stored = account.replace(version=version)
        self.upsert(ACCOUNTS, stored.row(), "tenant")
        self._accounts[stored.tenant] = stored
        if version != (current.version if current else 0):
            body = stored.feed()
            self.append(stored.tenant, "account", "upsert", body)
            self.record_version(stored.tenant, version, body)
        return stored

    def delete_account(self, tenant: str) -> bool:
        if self.account(tenant) is None:
            return False
        self.sql.execute(f"DELETE FROM {ACCOUNTS} WHERE tenant = ?", [tenant])
        self._accounts[tenant] = None
        self.append(tenant, "account", "delete", None)
        self.record_version(tenant, 0, None)
        return True

    def record_version(self, tenant: str, version: int, body: dict[str, Any] | None) -> None:
        """Keep this version of the account (None: deleted) with the transaction's cause."""
        cause = self.cause
        self.write(
            f"INSERT INTO {ACCOUNT_VERSIONS} (tenant, version, body, cause, event_id, event_type, event_at, "
            "actor, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                tenant,
                version,
                json.dumps(body) if body is not None else None,
                cause.kind,
                cause.event_id,
                cause.event_type,
                cause.event_at,
                cause.actor,
                utc_now_text(),
            ],
        )

    def append(self, tenant: str, kind: str, op: str, body: dict[str, Any] | None) -> None:
        """Log a change for followers; it gets its seq when the transaction commits."""
        self.pending.append((tenant, kind, op, json.dumps(body) if body is not None else None))

    def write(self, sql: str, params: Sequence[Any]) -> None:
        """A write whose result nobody reads (PostgreSQL sends it with the next statement)."""
        self.sql.execute(sql, params)

    def upsert(self, table: str, row: dict[str, Any], key: str) -> None:
        """Insert or replace one row by its primary key, `key` (columns comma-separated), on both backends."""
        self.sql.execute(*upsert_statement(table, row, key))


def upsert_statement(table: str, row: dict[str, Any], key: str) -> tuple[str, list[Any]]:
    """The SQL (both dialects) and parameters that insert `row` or replace the one with its `key`."""
    names = list(row)
    keys = {k.strip() for k in key.split(",")}
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
    sql = (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )
    return sql, list(row.values())


@dataclass(frozen=True)
class ChangeBatch:
    changes: list[dict[str, Any]]
    last_seq: int
    oldest_seq: int  # the oldest seq still retained (last_seq + 1 when the log is empty)


@dataclass(frozen=True)
class FeedBacklog:
    """Changes committed but not yet numbered (PostgreSQL, ADR 0020): normally a few, for moments.

    `stale`: those older than the sweep's threshold (a daemon died between its commit and its
    numbering); `swept`: how many the sweep has numbered since this process started."""

    unnumbered: int = 0
    stale: int = 0
    oldest_s: float = 0.0
    swept: int = 0

    def replace(self, **changes: Any) -> FeedBacklog:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "oldest_s": round(self.oldest_s, 3)}


@dataclass(frozen=True)
class Retention:
    """How long the mirror keeps what it no longer needs (the leader's retention job)."""

    processed_events: timedelta
    usage_events: timedelta
    closed_periods: timedelta
    account_versions: timedelta = timedelta(days=90)
    decision_records: timedelta = timedelta(days=14)


class Mirror(Protocol):
    """The port: what the daemon's handlers and jobs need from the mirror, whatever the backend."""

    backend: str  # "sqlite" or "postgresql"
    seq: int  # the newest seq this process knows was committed (own writes and other daemons')
    backlog: FeedBacklog  # changes committed but not numbered yet, as last measured (always none on SQLite)

    @property
    def where(self) -> str:
        """Where the data lives, for logs and errors (never a password)."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def transact(self, fn: Callable[[MirrorTxn], T]) -> T: ...
    async def transact_seq(self, fn: Callable[[MirrorTxn], T]) -> tuple[T, int]:
        """`transact`, also giving the newest seq at its commit (own changes included)."""
        ...

    def watch(self) -> asyncio.Event:
        """Set when the next change commits (on any daemon); take it *before* reading the log."""
        ...

    async def trim_changes(self, keep: int, max_age: timedelta) -> int: ...
    async def prune(self, retention: Retention) -> dict[str, int]: ...
    async def read(self, fn: Callable[[Sql], T]) -> T: ...
    async def changes_since(self, since: int, limit: int) -> ChangeBatch: ...
    async def accounts(self) -> list[MirrorAccount]: ...
    async def customers(self) -> dict[str, str]: ...
    async def customer_emails(self) -> dict[str, str | None]: ...
    async def last_seq(self) -> int: ...
    def snapshot(self, chunk: int = 1000) -> AsyncIterator[dict[str, Any]]: ...
    async def ping(self) -> None: ...
