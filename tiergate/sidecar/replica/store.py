"""The sidecar's replica: schema and migrations, the import/export document, reader and writer.

The replica is a SQLite file per pod. The sidecar's hot path reads it through `ReplicaReader`
(one plain sqlite3 connection, prepared point lookups); all writes go through `ReplicaWriter`,
each in one transaction, so a reader never sees a half-applied change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from tiergate.amounts import Amount, from_stored, stored
from tiergate.errors import ReplicaError, ReplicaNotReadyError, dotted_location
from tiergate.feed import KNOWN_KINDS, FeedChange, FeedOverride
from tiergate.log import host_safe_logger
from tiergate.models import ACCOUNT_FIELDS, Account, UsageCounter
from tiergate.periods import rfc3339
from tiergate.sidecar.replica.damage import ReplicaDamage
from tiergate.sidecar.replica.index import ReplicaIndex
from tiergate.sidecar.replica.rows import AccountRow as AccountRow  # re-exported: the callers' import
from tiergate.usage_events import GAUGE_PERIOD_START

log = host_safe_logger("tiergate.replica")  # also runs inside a host app (LocalDecisions)

MIGRATIONS = sqlite_utils.Migrations("tiergate_replica")

ACCOUNT_COLUMNS = ACCOUNT_FIELDS


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE accounts (
            tenant TEXT PRIMARY KEY,
            tier TEXT NOT NULL,
            status TEXT NOT NULL,
            quantity INTEGER NOT NULL DEFAULT 1,
            current_period_start TEXT,
            current_period_end TEXT,
            trial_end TEXT,
            cancel_at_period_end INTEGER NOT NULL DEFAULT 0,
            past_due_since TEXT,
            version INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE usage (
            tenant TEXT NOT NULL,
            code TEXT NOT NULL,
            period_start TEXT NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (tenant, period_start, code)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")


@MIGRATIONS()
def m002_pending_change(db: sqlite_utils.Database) -> None:
    # A scheduled downgrade, shown by /v1/entitlements; the policy input does not read it.
    for column in ("pending_tier", "pending_interval", "pending_at"):
        db.execute(f"ALTER TABLE accounts ADD COLUMN {column} TEXT")


@MIGRATIONS()
def m003_subscription_id(db: sqlite_utils.Database) -> None:
    # Resolves a Lago event's external_subscription_id to its tenant on the sidecar.
    db.execute("ALTER TABLE accounts ADD COLUMN subscription_id TEXT")
    db.execute("CREATE INDEX accounts_by_subscription ON accounts (subscription_id)")


@MIGRATIONS()
def m004_overrides(db: sqlite_utils.Database) -> None:
    # Per-tenant feature overrides from the daemon; `value` is the feature's JSON value.
    db.execute(
        """CREATE TABLE overrides (
            tenant TEXT NOT NULL,
            feature TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at TEXT,
            PRIMARY KEY (tenant, feature)
        ) WITHOUT ROWID"""
    )


@MIGRATIONS()
def m005_account_addons(db: sqlite_utils.Database) -> None:
    # The catalog add-ons the subscription holds: JSON {addon: quantity}, NULL for none.
    db.execute("ALTER TABLE accounts ADD COLUMN addons TEXT")


@MIGRATIONS()
def m006_exact_usage(db: sqlite_utils.Database) -> None:
    # Exact counters (tiergate/amounts.py): a column without a declared type keeps an INTEGER as an
    # integer and a decimal's TEXT as text, where INTEGER affinity would turn "2.5" into a REAL.
    db.execute("ALTER TABLE usage ADD COLUMN exact_value NOT NULL DEFAULT 0")
    db.execute("UPDATE usage SET exact_value = value")
    db.execute("ALTER TABLE usage DROP COLUMN value")
    db.execute("ALTER TABLE usage RENAME COLUMN exact_value TO value")


@MIGRATIONS()
def m007_gauge_as_of(db: sqlite_utils.Database) -> None:
    # A gauge's reading time (Unix seconds; NULL for counters that add up): a pending reading
    # older than the one the replica holds does not replace it (tiergate/sidecar/usage/ledger.py).
    db.execute("ALTER TABLE usage ADD COLUMN as_of REAL")


class ReplicaMeta(NamedTuple):
    data_as_of: datetime | None
    position: int | None
    generation: int
    source: str | None
    # A signed license's facts when the content came from one (tiergate.license.License.facts).
    license: dict[str, Any] | None = None


BUSY_TIMEOUT_S = 10.0  # how long a statement waits for another connection's lock


def open_replica(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate a replica file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplicaError(
            f"cannot create the directory of replica {path} (TIERGATE_REPLICA_PATH): {exc.strerror}"
        ) from exc
    try:
        db = sqlite_utils.Database(path)
        # Before anything else: an import and the follower may both write (one waits, never fails).
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the replica can always be re-fetched
        MIGRATIONS.apply(db)
    except sqlite3.DatabaseError as exc:
        raise ReplicaError(f"replica {path} is not a usable SQLite file: {exc}") from exc
    return db


def account_row(account: Account) -> AccountRow:
    return AccountRow(
        tenant=account.tenant,
        tier=account.tier,
        status=account.status,
        quantity=account.quantity,
        current_period_start=rfc3339(account.current_period_start),
        current_period_end=rfc3339(account.current_period_end),
        trial_end=rfc3339(account.trial_end),
        cancel_at_period_end=int(account.cancel_at_period_end),
        past_due_since=rfc3339(account.past_due_since),
        version=account.version,
        pending_tier=account.pending_tier,
        pending_interval=account.pending_interval,
        pending_at=rfc3339(account.pending_at),
        subscription_id=account.subscription_id,
        addons=json.dumps(account.addons, sort_keys=True, separators=(",", ":")) if account.addons else None,
    )


class ReplicaWriter:
    """The only writer of a replica file; every method is one transaction."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def replace_all(
        self,
        accounts: Iterable[Account],
        usage: Iterable[UsageCounter],
        *,
        data_as_of: datetime,
        position: int | None = None,
        source: str = "import",
        expect_accounts: int | None = None,
        overrides: Iterable[FeedOverride] = (),
        license: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """Swap the whole content atomically; returns (accounts, usage counters) written.

        With `expect_accounts`, a different count rolls everything back (a truncated snapshot).
        `license`: the facts of the signed license the content comes from (None: none).
        """
        conn = self.db.conn
        with self.db.atomic():
            conn.execute("DELETE FROM accounts")
            conn.execute("DELETE FROM usage")
            conn.execute("DELETE FROM overrides")
            n_accounts = _insert_accounts(conn, (account_row(a) for a in accounts))
            n_usage = _insert_usage(conn, usage)
            conn.executemany(_UPSERT_OVERRIDE, (override_row(o) for o in overrides))
            if expect_accounts is not None and n_accounts != expect_accounts:
                raise ReplicaError(f"expected {expect_accounts} accounts, got {n_accounts}; nothing replaced")
            generation = self._read_meta(conn).generation + 1
            self._write_meta(
                conn,
                data_as_of=rfc3339(data_as_of),
                position=None if position is None else str(position),
                generation=str(generation),
                source=source,
                license=None if license is None else json.dumps(license, sort_keys=True),
            )
        return n_accounts, n_usage

    def apply_changes(
        self, changes: Iterable[FeedChange], *, position: int, data_as_of: datetime
    ) -> set[str]:
        """Apply one feed batch and the new position in one transaction; returns touched tenants.

        Kinds this version does not know (from a newer daemon) are skipped.
        """
        conn = self.db.conn
        touched: set[str] = set()
        with self.db.atomic():
            for change in changes:
                if change.kind not in KNOWN_KINDS:
                    continue
                touched.add(change.tenant)
                if change.kind == "account" and change.op == "upsert" and change.account is not None:
                    conn.execute(_UPSERT_ACCOUNT, account_row(change.account))
                elif change.kind == "account" and change.op == "delete":
                    conn.execute("DELETE FROM accounts WHERE tenant = ?", (change.tenant,))
                elif change.kind == "usage" and change.usage is not None:
                    u = change.usage
                    conn.execute(
                        _UPSERT_USAGE,
                        (u.tenant, u.code, rfc3339(u.period_start), stored(u.amount()), _as_of(u)),
                    )
                elif change.kind == "override" and change.op == "upsert" and change.override is not None:
                    conn.execute(_UPSERT_OVERRIDE, override_row(change.override))
                elif change.kind == "override" and change.op == "delete":
                    conn.execute(
                        "DELETE FROM overrides WHERE tenant = ? AND feature = ?",
                        (change.tenant, change.feature),
                    )
            self._write_meta(conn, position=str(position), data_as_of=rfc3339(data_as_of), source="feed")
        return touched

    def mark_current(self, data_as_of: datetime) -> None:
        """Record that the daemon confirmed nothing changed up to `data_as_of`."""
        with self.db.atomic():
            self._write_meta(self.db.conn, data_as_of=rfc3339(data_as_of))

    def export(self) -> dict[str, Any]:
        conn = self.db.conn
        accounts = [
            _exported(row.to_account())
            for row in (AccountRow(*r) for r in conn.execute(SELECT_ACCOUNTS + " ORDER BY tenant"))
        ]
        usage = [
            {"tenant": t, "code": c, "period_start": p, "value": v}
            for t, c, p, v in conn.execute(
                "SELECT tenant, code, period_start, value FROM usage ORDER BY tenant, code, period_start"
            )
        ]
        meta = self._read_meta(conn)
        document = {"data_as_of": rfc3339(meta.data_as_of), "accounts": accounts, "usage": usage}
        overrides = [
            {"tenant": t, "feature": f, "value": json.loads(v), "expires_at": e}
            for t, f, v, e in conn.execute(
                "SELECT tenant, feature, value, expires_at FROM overrides ORDER BY tenant, feature"
            )
        ]
        if overrides:  # left out when empty: documents from before overrides round-trip unchanged
            document["overrides"] = overrides
        return document

    @staticmethod
    def _read_meta(conn: sqlite3.Connection) -> ReplicaMeta:
        return read_meta(conn)

    @staticmethod
    def _write_meta(conn: sqlite3.Connection, **values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _exported(account: Account) -> dict[str, Any]:
    # No pending change leaves the fields out: documents written before they existed round-trip.
    body = account.model_dump(mode="json", exclude={"version"})
    if not body["addons"]:
        del body["addons"]  # as written before add-ons existed
    return {k: v for k, v in body.items() if v is not None or k not in _OMITTED_WHEN_NULL}


_OMITTED_WHEN_NULL = frozenset({"pending_tier", "pending_interval", "pending_at", "subscription_id"})


SELECT_ACCOUNTS = "SELECT " + ", ".join(ACCOUNT_COLUMNS) + " FROM accounts"
_UPSERT_ACCOUNT = (
    f"INSERT OR REPLACE INTO accounts ({', '.join(ACCOUNT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ACCOUNT_COLUMNS))})"
)
_UPSERT_OVERRIDE = "INSERT OR REPLACE INTO overrides (tenant, feature, value, expires_at) VALUES (?, ?, ?, ?)"


def override_row(override: FeedOverride) -> tuple[str, str, str, str | None]:
    value = json.dumps(override.value_document(), separators=(",", ":"))
    return override.tenant, override.feature, value, rfc3339(override.expires_at)


_UPSERT_USAGE = (
    "INSERT OR REPLACE INTO usage (tenant, code, period_start, value, as_of) VALUES (?, ?, ?, ?, ?)"
)


def _as_of(counter: UsageCounter) -> float | None:
    as_of = getattr(counter, "as_of", None)  # the feed's gauges carry it; imported counters do not
    return as_of.timestamp() if isinstance(as_of, datetime) else None


def _insert_accounts(conn: sqlite3.Connection, rows: Iterable[AccountRow]) -> int:
    placeholders = ", ".join("?" * len(ACCOUNT_COLUMNS))
    cursor = conn.executemany(
        f"INSERT INTO accounts ({', '.join(ACCOUNT_COLUMNS)}) VALUES ({placeholders})", rows
    )
    return cursor.rowcount


def _insert_usage(conn: sqlite3.Connection, counters: Iterable[UsageCounter]) -> int:
    cursor = conn.executemany(
        "INSERT INTO usage (tenant, code, period_start, value, as_of) VALUES (?, ?, ?, ?, ?)",
        ((u.tenant, u.code, rfc3339(u.period_start), stored(u.amount()), _as_of(u)) for u in counters),
    )
    return cursor.rowcount


def read_meta(conn: sqlite3.Connection) -> ReplicaMeta:
    values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    as_of = values.get("data_as_of")
    position = values.get("position")
    return ReplicaMeta(
        data_as_of=datetime.fromisoformat(as_of).astimezone(UTC) if as_of else None,
        position=int(position) if position is not None else None,
        generation=int(values.get("generation", 0)),
        source=values.get("source"),
        license=json.loads(values["license"]) if values.get("license") else None,
    )


# Told of every change this process sees: the new meta, and the tenants whose rows changed
# (None: any of them, e.g. a snapshot or an import; an empty set: only the meta).
ReplicaListener = Callable[[ReplicaMeta, "set[str] | None"], None]

# How often `watch` looks for commits by other processes (`tiergate replica import`).
WATCH_EVERY_S = 0.05


class ReplicaReader:
    """The replica as the decision path sees it: an in-memory index of the file, and its meta.

    The reader is the one owner of what this process knows of the replica's state (`meta`) and
    of its in-memory copy (`index`): the follower announces each batch it commits (`applied`:
    its tenants are re-read, then its position adopted), `watch` notices other processes' commits
    (an import: everything is re-read), and every subscriber learns of each change once. The
    index's counters always belong to `meta.position`, which read-your-writes relies on.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """`read_only`: another process owns the file (an app's LocalDecisions): never create,
        migrate or write it. Its follower's batches are not announced here, so such a reader keeps
        no in-memory index: it reads the file on each lookup and adopts every commit it notices."""
        if not read_only:
            open_replica(path).close()  # create and migrate once, then read through a plain connection
        self.path = path
        self._target = f"file:{path}?mode=ro" if read_only else str(path)
        self._uri = read_only
        self._conn = _read_connection(self._target, self._uri)
        self._inode = _inode(path)  # a read-only reader follows the path when its owner replaces the file
        self._data_version = -1
        self._listeners: list[ReplicaListener] = []
        self.index = ReplicaIndex()
        self.meta = ReplicaMeta(None, None, -1, None)
        # A read error that says the file is damaged stops every read of it: the index keeps
        # answering until the follower has set the file aside and a new snapshot is loaded.
        self.damage = ReplicaDamage()
        # While a new generation loads on a thread: the tenants batches touched meanwhile, and
        # the position of the last one (the old index and meta keep answering, consistently).
        self._reloading: set[str] | None = None
        self._reloaded_position: int | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._data_version = self._version()
        self._in_memory = not read_only
        if self._in_memory:
            self._load_now()  # at start, before anything answers: synchronously
        else:
            self.meta = read_meta(self._conn)

    def _load_now(self) -> None:
        with self._read() as conn:
            meta = read_meta(conn)
            self._load_all(conn)
        self.meta = meta
        self._announce(None)

    def subscribe(self, listener: ReplicaListener) -> None:
        self._listeners.append(listener)

    def refresh(self) -> bool:
        """Notice other connections' commits; True when there were any.

        A new generation (an import, a snapshot) is read whole. Otherwise only the meta's
        data_as_of is adopted: rows and position change together, when the follower announces
        its batch through `applied`. A damaged file is not read (see `damage`)."""
        if not self._in_memory and self._follow_replacement():
            return True
        if self._reloading is not None or self.damage.state == "damaged":
            return False  # the reload adopts everything when it ends
        try:
            return self._refresh()
        except sqlite3.DatabaseError as exc:
            if self.damage.report(exc, "refresh"):
                return False
            raise

    def _refresh(self) -> bool:
        version = self._version()
        if version == self._data_version:
            return False
        self._data_version = version
        meta = read_meta(self._conn)
        if self.damage.state == "downloading":
            return self._adopt_replacement(meta)
        if not self._in_memory:
            previous, self.meta = self.meta, meta
            self._announce(None if meta.generation != previous.generation else set())
            return True
        if meta.generation != self.meta.generation:
            self._reload_all()
            return True
        self.meta = meta._replace(position=self.meta.position)
        self._announce(set())
        return True

    def _follow_replacement(self) -> bool:
        """Read-only (another process owns the file): when the owner has set a damaged file aside
        and a new one at the same path holds a snapshot, read that one from now on."""
        inode = _inode(self.path)
        if inode is None or inode == self._inode:
            return False
        conn = _read_connection(self._target, self._uri)
        try:
            meta = read_meta(conn)
        except sqlite3.DatabaseError:
            meta = None
        if meta is None or meta.generation == 0:  # not yet downloaded: keep the old file meanwhile
            conn.close()
            return False
        self._conn.close()
        self._conn, self._inode = conn, inode
        self._data_version = self._version()
        self.meta = meta
        if self.damage.state != "ok":
            self.damage.state = "downloading"
            self.damage.recovered()
        self._announce(None)
        return True

    def _adopt_replacement(self, meta: ReplicaMeta) -> bool:
        """After the damaged file was set aside: the new one is read whole once it holds data (a
        snapshot or an import); until then (generation 0, empty) the index keeps answering."""
        if meta.generation == 0:
            return False
        self._reload_all()
        return True

    def reopen(self) -> None:
        """The file at `path` was replaced (the damaged one set aside): read the new one. The
        in-memory index keeps answering until the new file holds a snapshot."""
        self._conn.close()
        self._conn = _read_connection(self._target, self._uri)
        self._inode = _inode(self.path)
        self._data_version = -1

    def applied(self, tenants: set[str] | None) -> None:
        """The follower committed a batch touching `tenants` (None: a whole snapshot)."""
        try:
            self._applied(tenants)
        except sqlite3.DatabaseError as exc:
            self.damage.report(exc, "apply")
            raise

    def _applied(self, tenants: set[str] | None) -> None:
        if self.damage.state == "damaged":
            return  # not read; the follower sets the file aside on its next step
        if not self._in_memory:
            self.refresh()
            self._announce(tenants)
            return
        if self._reloading is not None:
            if tenants is None:
                self._reloading.add(_EVERYONE)
            else:
                self._reloading.update(tenants)
            self._reloaded_position = read_meta(self._conn).position
            return
        self._data_version = self._version()
        with self._read() as conn:
            meta = read_meta(conn)
            if tenants is not None and meta.generation == self.meta.generation:
                self._load_tenants(conn, tenants)
                self.meta = meta
                self._announce(tenants)
                return
        self._reload_all()

    def _reload_all(self) -> None:
        """A new generation: read it whole on a thread while the old index keeps answering (a
        million tenants take tens of seconds); synchronously when no event loop runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._load_now()
            return
        self._reloading, self._reloaded_position = set(), None
        self._reload_task = loop.create_task(self._reload_in_thread(), name="replica-reload")

    async def _reload_in_thread(self) -> None:
        try:
            index, meta = await asyncio.to_thread(_read_whole, self._target, self._uri)
        except Exception as exc:  # the old index keeps answering; the next refresh tries again
            if not self.damage.report(exc, "reload"):
                log.exception("replica_reload_failed")
            self._reloading, self._data_version = None, -1
            return
        touched, self._reloading = self._reloading or set(), None
        if _EVERYONE in touched:  # a snapshot landed meanwhile: read again
            self._reload_all()
            return
        self.index = index
        with self._read() as conn:
            self._load_tenants(conn, touched)
        position = self._reloaded_position if self._reloaded_position is not None else meta.position
        self.meta = meta._replace(position=position)
        self._data_version = -1  # the next refresh re-reads the meta (data_as_of, another import)
        self.damage.recovered()  # after a damaged file was set aside: the new one is in memory
        self._announce(None)

    async def watch(self, every_s: float = WATCH_EVERY_S) -> None:
        """Notice other processes' commits (an import) until cancelled; a failure is logged and
        the next round tries again (the watch never ends on its own)."""
        failing = False
        while True:
            await asyncio.sleep(every_s)
            try:
                self.refresh()
            except Exception:
                if not failing:
                    log.exception("replica_watch_failed")
                failing = True
            else:
                failing = False

    def _announce(self, tenants: set[str] | None) -> None:
        for listener in self._listeners:
            listener(self.meta, tenants)

    def account(self, tenant: str) -> AccountRow | None:
        if self._in_memory:
            return self.index.account(tenant)
        row = self._conn.execute(SELECT_ACCOUNTS + " WHERE tenant = ?", (tenant,)).fetchone()
        return AccountRow(*row) if row is not None else None

    def usage(self, tenant: str, period_start: str) -> dict[str, Amount]:
        """The tenant's counters, belonging to `meta.position` (re-read while commits land, when
        the file is read directly)."""
        if self._in_memory:
            return self.index.usage(tenant, period_start)
        usage = self._usage_from_file(tenant, period_start)
        while self.refresh():
            usage = self._usage_from_file(tenant, period_start)
        return usage

    def _usage_from_file(self, tenant: str, period_start: str) -> dict[str, Amount]:
        rows = self._conn.execute(
            "SELECT code, value FROM usage WHERE tenant = ? AND period_start IN (?, ?)",
            (tenant, period_start, GAUGE_PERIOD_START),  # a gauge counts in every period
        ).fetchall()
        return {code: from_stored(value) for code, value in rows}

    def gauge_as_of(self, tenant: str, code: str) -> float | None:
        """When the reading this replica holds for a gauge happened (Unix seconds), or None."""
        row = self._conn.execute(
            "SELECT as_of FROM usage WHERE tenant = ? AND code = ? AND period_start = ?",
            (tenant, code, GAUGE_PERIOD_START),
        ).fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    def count_accounts(self) -> int:
        if self._in_memory:
            return len(self.index)
        return int(self._conn.execute("SELECT count(*) FROM accounts").fetchone()[0])

    def tenant_of_subscription(self, subscription_id: str) -> str | None:
        """The tenant whose account holds this Stripe subscription (a Lago external_subscription_id).

        Read from the file (an index); while the file is damaged, from the in-memory index (a
        read-only reader has none: a 503 that says so)."""
        if not self.damage.active:
            try:
                row = self._conn.execute(
                    "SELECT tenant FROM accounts WHERE subscription_id = ? LIMIT 1", (subscription_id,)
                ).fetchone()
                return str(row[0]) if row is not None else None
            except sqlite3.DatabaseError as exc:
                if not self.damage.report(exc, "subscription lookup"):
                    raise
        if self._in_memory:
            return self.index.tenant_of_subscription(subscription_id)
        raise ReplicaNotReadyError(  # read-only: no in-memory copy to ask
            "the replica file is damaged and being downloaded again: external_subscription_id cannot be "
            "resolved until then; retry shortly, or send external_customer_id"
        )

    def overrides(self, tenant: str) -> dict[str, dict[str, Any]]:
        """The tenant's overrides as the policy reads them: feature -> {value, expires_at}."""
        if self._in_memory:
            return self.index.overrides(tenant)
        rows = self._conn.execute(_SELECT_OVERRIDES + " WHERE tenant = ?", (tenant,)).fetchall()
        return _overrides_by_tenant(rows).get(tenant, {})

    def close(self) -> None:
        self._conn.close()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: rows and meta from the same commit."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _load_all(self, conn: sqlite3.Connection) -> None:
        _load_index(self.index, conn)

    def _load_tenants(self, conn: sqlite3.Connection, tenants: set[str]) -> None:
        names = list(tenants)
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            where = f" WHERE tenant IN ({', '.join('?' * len(chunk))})"
            self.index.replace_tenants(
                chunk,
                [AccountRow(*row) for row in conn.execute(SELECT_ACCOUNTS + where, chunk)],
                conn.execute(_SELECT_USAGE + where, chunk).fetchall(),
                _overrides_by_tenant(conn.execute(_SELECT_OVERRIDES + where, chunk)),
            )


_SELECT_USAGE = "SELECT tenant, period_start, code, value FROM usage"
_EVERYONE = "\x00every tenant"  # in the reload's touched set: a whole snapshot arrived meanwhile


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _read_connection(target: str, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target, uri=uri, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )
    conn.execute("PRAGMA query_only=ON")
    return conn


def _read_whole(target: str, uri: bool) -> tuple[ReplicaIndex, ReplicaMeta]:
    """A new index and its meta from one read transaction, on its own connection (any thread)."""
    conn = _read_connection(target, uri)
    try:
        conn.execute("BEGIN")
        meta = read_meta(conn)
        index = ReplicaIndex()
        _load_index(index, conn)
        conn.execute("COMMIT")
        return index, meta
    finally:
        conn.close()


_SELECT_OVERRIDES = "SELECT tenant, feature, value, expires_at FROM overrides"


def _load_index(index: ReplicaIndex, conn: sqlite3.Connection) -> None:
    """The whole file into `index`, streamed in primary-key order (the index merges accounts and
    counters tenant by tenant, so no intermediate copy of either table is held)."""
    index.replace_all(
        (AccountRow(*row) for row in conn.execute(SELECT_ACCOUNTS + " ORDER BY tenant")),
        conn.execute(_SELECT_USAGE + " ORDER BY tenant, period_start, code"),
        _overrides_by_tenant(conn.execute(_SELECT_OVERRIDES)),
    )


def _overrides_by_tenant(rows: Iterable[tuple[str, str, str, str | None]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for tenant, feature, value, expires_at in rows:
        found.setdefault(tenant, {})[feature] = {"value": json.loads(value), "expires_at": expires_at}
    return found


_CHUNK = 500  # tenants per `IN (...)` query when a batch touches many


class ReplicaDocument(BaseModel):
    """The import/export JSON: the backup format and the "static entitlements" path."""

    model_config = ConfigDict(extra="forbid")

    data_as_of: datetime | None = None
    accounts: list[Account]
    usage: list[UsageCounter] = []
    overrides: list[FeedOverride] = []


def parse_replica_document(text: str | bytes, source: str = "document") -> ReplicaDocument:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ReplicaError(f"{source} is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ReplicaError(
            f'{source} must be a JSON object {{"accounts": [...], "usage": [...]}}, not {_json_kind(raw)}'
        )
    try:
        document = ReplicaDocument.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{dotted_location(err['loc'])}: {_plain_message(err)}" for err in exc.errors(include_url=False)
        )
        raise ReplicaError(f"{source} is invalid: {problems}") from None
    duplicates = _duplicates(a.tenant for a in document.accounts)
    if duplicates:
        raise ReplicaError(f"{source} is invalid: tenants listed twice: {sorted(duplicates)[:10]}")
    return document


def _plain_message(err: ErrorDetails) -> str:
    """pydantic's "instance of Account" means nothing to someone writing JSON by hand."""
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a JSON object, not {_json_kind(err['input'])}"
    return err["msg"]


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _duplicates(items: Iterator[str]) -> set[str]:
    seen: set[str] = set()
    twice: set[str] = set()
    for item in items:
        (twice if item in seen else seen).add(item)
    return twice


def every_override(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every tenant's overrides in a replica file, as the policy reads them (tenant -> feature ->
    {value, expires_at})."""
    return _overrides_by_tenant(conn.execute(_SELECT_OVERRIDES))
