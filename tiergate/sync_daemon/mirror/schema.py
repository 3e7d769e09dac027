"""The mirror's tables and the SQLite migrations (table names live here; PostgreSQL's twin: postgres_schema.py).

A change to a table is a migration in BOTH lists: the two backends keep the same columns.
"""

from __future__ import annotations

import sqlite_utils

from tiergate.usage_events import GAUGE_PERIOD_START

MIGRATIONS = sqlite_utils.Migrations("tiergate_mirror")

ACCOUNTS = "accounts"
CUSTOMERS = "customers"
EVENTS = "processed_events"
CHANGES = "changes"
USAGE = "usage"


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    # Times that come from Stripe's `created` stay integer seconds (they order events); times a
    # policy reads are RFC 3339 `Z` strings, exactly as the feed carries them.
    db.execute(
        """CREATE TABLE accounts (
            tenant TEXT PRIMARY KEY,
            stripe_customer_id TEXT,
            subscription_id TEXT,
            tier TEXT NOT NULL,
            interval TEXT,
            status TEXT NOT NULL,
            quantity INTEGER NOT NULL DEFAULT 1,
            current_period_start TEXT,
            current_period_end TEXT,
            trial_end TEXT,
            cancel_at_period_end INTEGER NOT NULL DEFAULT 0,
            canceled_at TEXT,
            past_due_since TEXT,
            payment_attempts INTEGER NOT NULL DEFAULT 0,
            payment_updated INTEGER NOT NULL DEFAULT 0,
            stripe_updated INTEGER NOT NULL DEFAULT 0,
            needs_reconcile INTEGER NOT NULL DEFAULT 0,
            unmapped_price INTEGER NOT NULL DEFAULT 0,
            version INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX accounts_by_subscription ON accounts (subscription_id)")
    db.execute(
        """CREATE TABLE customers (
            customer_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            deleted_at INTEGER
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE processed_events (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            outcome TEXT NOT NULL,
            received_at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )
    # AUTOINCREMENT: a seq is never reused, even after the newest rows are trimmed, so a follower
    # position stays meaningful across retention.
    db.execute(
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('account', 'usage')),
            op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
            body TEXT,
            at TEXT NOT NULL
        )"""
    )
    # Usage counters arrive with usage ingest (issue 5); the feed already carries their shape.
    db.execute(
        """CREATE TABLE usage (
            tenant TEXT NOT NULL,
            code TEXT NOT NULL,
            period_start TEXT NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (tenant, code, period_start)
        ) WITHOUT ROWID"""
    )


@MIGRATIONS()
def m002_pending_change(db: sqlite_utils.Database) -> None:
    # A downgrade scheduled for the period end (billing actions); NULL when nothing is pending.
    for column in ("pending_tier", "pending_interval", "pending_at"):
        db.execute(f"ALTER TABLE {ACCOUNTS} ADD COLUMN {column} TEXT")


USAGE_EVENTS = "usage_events"
SINK_CURSORS = "sink_cursors"
USAGE_PERIODS = "usage_periods"


@MIGRATIONS()
def m003_usage_events(db: sqlite_utils.Database) -> None:
    # One row per ingested event: the idempotency key (unique per tenant; Lago's is per
    # external_subscription_id, see docs/usage.md) and the answer to GET /v1/usage/events/{transaction_id}.
    db.execute(
        """CREATE TABLE usage_events (
            tenant TEXT NOT NULL,
            transaction_id TEXT NOT NULL,
            code TEXT NOT NULL,
            timestamp TEXT NOT NULL,
            period_start TEXT NOT NULL,
            value INTEGER NOT NULL,
            body TEXT NOT NULL,
            received_at TEXT NOT NULL,
            PRIMARY KEY (tenant, transaction_id)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX usage_events_by_transaction ON usage_events (transaction_id)")
    # The subscription periods counters were kept in, so a late event finds its own period.
    db.execute(
        """CREATE TABLE usage_periods (
            tenant TEXT NOT NULL,
            period_start TEXT NOT NULL,
            period_end TEXT NOT NULL,
            PRIMARY KEY (tenant, period_start)
        ) WITHOUT ROWID"""
    )


@MIGRATIONS()
def m004_usage_event_documents(db: sqlite_utils.Database) -> None:
    # Every field of Lago's event as sent (what sinks forward), the subscription it named, and a
    # seq that orders the stored events for the sinks' cursors and the paged listing.
    for column in ("external_subscription_id TEXT", "document TEXT", "seq INTEGER"):
        db.execute(f"ALTER TABLE {USAGE_EVENTS} ADD COLUMN {column}")
    db.execute(
        f"""UPDATE {USAGE_EVENTS} SET seq = (
            SELECT n FROM (
                SELECT tenant AS t, transaction_id AS x,
                       row_number() OVER (ORDER BY received_at, tenant, transaction_id) AS n
                FROM {USAGE_EVENTS}
            ) WHERE t = tenant AND x = transaction_id
        )"""
    )
    db.execute(f"CREATE UNIQUE INDEX usage_events_by_seq ON {USAGE_EVENTS} (seq)")
    db.execute(f"CREATE INDEX usage_events_by_tenant_time ON {USAGE_EVENTS} (tenant, timestamp, seq)")
    # Each sink's durable cursor: the highest event seq it has delivered (or given up on).
    db.execute(
        """CREATE TABLE sink_cursors (
            sink TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )
    # Events a sink refused for good (e.g. Lago's 422 other than value_already_exist): visible, resendable.
    db.execute(
        """CREATE TABLE sink_failures (
            sink TEXT NOT NULL,
            seq INTEGER NOT NULL,
            error TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (sink, seq)
        ) WITHOUT ROWID"""
    )


@MIGRATIONS()
def m005_usage_events_by_tenant(db: sqlite_utils.Database) -> None:
    # GET /v1/usage/events?tenant=...: one tenant's events in ingest order.
    db.execute(f"CREATE INDEX usage_events_by_tenant_seq ON {USAGE_EVENTS} (tenant, seq)")


OVERRIDES = "overrides"
OVERRIDE_AUDIT = "override_audit"


@MIGRATIONS()
def m006_overrides(db: sqlite_utils.Database) -> None:
    # Per-tenant feature overrides (support's grants), and who set or removed each, when and why.
    db.execute(
        f"""CREATE TABLE {OVERRIDES} (
            tenant TEXT NOT NULL,
            feature TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at TEXT,
            reason TEXT NOT NULL,
            actor TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (tenant, feature)
        ) WITHOUT ROWID"""
    )
    db.execute(
        f"""CREATE TABLE {OVERRIDE_AUDIT} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant TEXT NOT NULL,
            feature TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('set', 'remove')),
            value TEXT,
            expires_at TEXT,
            reason TEXT NOT NULL,
            actor TEXT,
            at TEXT NOT NULL
        )"""
    )
    db.execute(f"CREATE INDEX override_audit_by_tenant ON {OVERRIDE_AUDIT} (tenant, id)")
    # The change log learns a third kind. SQLite cannot alter a CHECK: rebuild the table, keeping
    # every row and the AUTOINCREMENT position (a seq must never be reused, even when trimmed).
    found = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", [CHANGES]).fetchone()
    top = int(found[0]) if found else 0
    db.execute(
        """CREATE TABLE changes_v2 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('account', 'usage', 'override')),
            op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
            body TEXT,
            at TEXT NOT NULL
        )"""
    )
    db.execute(
        f"INSERT INTO changes_v2 (seq, tenant, kind, op, body, at) SELECT seq, tenant, kind, op, body, at FROM {CHANGES}"
    )
    db.execute(f"DROP TABLE {CHANGES}")
    db.execute(f"ALTER TABLE changes_v2 RENAME TO {CHANGES}")
    db.execute("DELETE FROM sqlite_sequence WHERE name IN (?, 'changes_v2')", [CHANGES])
    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", [CHANGES, top])


@MIGRATIONS()
def m007_account_addons(db: sqlite_utils.Database) -> None:
    # The add-ons the subscription holds besides its tier's item: JSON {addon: quantity}, NULL for none.
    db.execute(f"ALTER TABLE {ACCOUNTS} ADD COLUMN addons TEXT")


OUTBOUND_EVENTS = "outbound_events"
OUTBOUND_DELIVERIES = "outbound_deliveries"
OUTBOUND_ONCE = "outbound_once"


@MIGRATIONS()
def m008_outbound_webhooks(db: sqlite_utils.Database) -> None:
    # Events for the operator's webhook endpoints, committed with the change that caused them.
    db.execute(
        f"""CREATE TABLE {OUTBOUND_EVENTS} (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            tenant TEXT,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )
    # The durable queue and delivery log: one row per (event, endpoint).
    db.execute(
        f"""CREATE TABLE {OUTBOUND_DELIVERIES} (
            event_id TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_status INTEGER,
            last_error TEXT,
            delivered_at TEXT,
            PRIMARY KEY (event_id, endpoint)
        ) WITHOUT ROWID"""
    )
    db.execute(f"CREATE INDEX outbound_due ON {OUTBOUND_DELIVERIES} (status, next_attempt_at)")
    # Keys of events sent once only (a threshold per tenant, metric and period; a grace that ended).
    db.execute(f"CREATE TABLE {OUTBOUND_ONCE} (key TEXT PRIMARY KEY, at TEXT NOT NULL) WITHOUT ROWID")


# The view other services query (docs/mirror-postgres.md); the PostgreSQL twin is in postgres_schema.py.
CURRENT_USAGE_SQLITE = """CREATE VIEW current_usage AS
SELECT u.tenant, u.code, u.period_start, u.value, a.tier
FROM usage u LEFT JOIN accounts a ON a.tenant = u.tenant
WHERE u.period_start <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
  AND u.period_start >= COALESCE(a.current_period_start, strftime('%Y-%m-01T00:00:00Z', 'now'))
  AND NOT EXISTS (
    SELECT 1 FROM usage newer
    WHERE newer.tenant = u.tenant AND newer.code = u.code
      AND newer.period_start > u.period_start
      AND newer.period_start <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))"""


@MIGRATIONS()
def m009_current_usage_and_retention(db: sqlite_utils.Database) -> None:
    # Each tenant's counters of its current period, for SQL readers; indexes for the retention job.
    db.execute(CURRENT_USAGE_SQLITE)
    db.execute(f"CREATE INDEX {EVENTS}_by_received_at ON {EVENTS} (received_at)")
    db.execute(f"CREATE INDEX {USAGE_EVENTS}_by_received_at ON {USAGE_EVENTS} (received_at)")
    db.execute(f"CREATE INDEX {CHANGES}_by_at ON {CHANGES} (at)")


@MIGRATIONS()
def m010_exact_usage_values(db: sqlite_utils.Database) -> None:
    # Exact decimal values (tiergate/amounts.py): `value` of events and counters becomes a column
    # without a declared type, which keeps an INTEGER as an integer and a decimal's TEXT as text
    # (INTEGER affinity would turn "2.5" into a REAL). The view reads the column, so it is rebuilt.
    db.execute("DROP VIEW current_usage")
    for table in (USAGE, USAGE_EVENTS):
        db.execute(f"ALTER TABLE {table} ADD COLUMN exact_value NOT NULL DEFAULT 0")
        db.execute(f"UPDATE {table} SET exact_value = value")
        db.execute(f"ALTER TABLE {table} DROP COLUMN value")
        db.execute(f"ALTER TABLE {table} RENAME COLUMN exact_value TO value")
    db.execute(CURRENT_USAGE_SQLITE)


@MIGRATIONS()
def m011_usage_gauges(db: sqlite_utils.Database) -> None:
    # Gauges (`aggregation: latest`): the timestamp of the reading a gauge holds, so an older
    # reading arriving late does not replace a newer one (NULL for counters that add up).
    db.execute(f"ALTER TABLE {USAGE} ADD COLUMN gauge_at TEXT")


# Since m012: gauges too (kept under the period that never ends, GAUGE_PERIOD_START), with the
# time of their reading; the PostgreSQL twin is V5.
CURRENT_USAGE_SQLITE_V2 = f"""CREATE VIEW current_usage AS
SELECT u.tenant, u.code, u.period_start, u.value, a.tier, u.gauge_at
FROM usage u LEFT JOIN accounts a ON a.tenant = u.tenant
WHERE u.period_start = '{GAUGE_PERIOD_START}'
   OR (u.period_start <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
       AND u.period_start >= COALESCE(a.current_period_start, strftime('%Y-%m-01T00:00:00Z', 'now'))
       AND NOT EXISTS (
         SELECT 1 FROM usage newer
         WHERE newer.tenant = u.tenant AND newer.code = u.code
           AND newer.period_start > u.period_start
           AND newer.period_start <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))"""


@MIGRATIONS()
def m012_current_usage_gauges(db: sqlite_utils.Database) -> None:
    # Gauges in the view. (PostgreSQL's V5 also indexes the events not numbered yet; SQLite's one
    # writer numbers events as it stores them, ADR 21.)
    db.execute("DROP VIEW current_usage")
    db.execute(CURRENT_USAGE_SQLITE_V2)


ACCOUNT_VERSIONS = "account_versions"


@MIGRATIONS()
def m013_account_versions(db: sqlite_utils.Database) -> None:
    # Each version of an account followers saw, with what caused it (a Stripe event, a reconcile
    # run, a billing action): the lineage behind a decision. `body` is the feed's Account (NULL
    # for a deletion). Retention keeps each tenant's newest row whatever its age.
    db.execute(
        f"""CREATE TABLE {ACCOUNT_VERSIONS} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant TEXT NOT NULL,
            version INTEGER NOT NULL,
            body TEXT,
            cause TEXT NOT NULL,
            event_id TEXT,
            event_type TEXT,
            event_at TEXT,
            actor TEXT,
            at TEXT NOT NULL
        )"""
    )
    db.execute(f"CREATE INDEX {ACCOUNT_VERSIONS}_by_tenant ON {ACCOUNT_VERSIONS} (tenant, id)")
    db.execute(f"CREATE INDEX {ACCOUNT_VERSIONS}_by_at ON {ACCOUNT_VERSIONS} (at)")


DECISION_RECORDS = "decision_records"


@MIGRATIONS()
def m014_decision_records(db: sqlite_utils.Database) -> None:
    # Deny records sidecars ship with their usage (the decision, its input, the replica position):
    # what GET /v1/decisions/{decision_id} explains. Kept for TIERGATE_DECISION_RECORD_RETENTION_DAYS.
    db.execute(
        f"""CREATE TABLE {DECISION_RECORDS} (
            decision_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            feature TEXT NOT NULL,
            allow INTEGER NOT NULL,
            reason TEXT NOT NULL,
            body TEXT NOT NULL,
            at TEXT NOT NULL,
            received_at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute(f"CREATE INDEX {DECISION_RECORDS}_by_tenant ON {DECISION_RECORDS} (tenant, at)")
    db.execute(f"CREATE INDEX {DECISION_RECORDS}_by_received_at ON {DECISION_RECORDS} (received_at)")


@MIGRATIONS()
def m015_one_index_fewer_per_event(db: sqlite_utils.Database) -> None:
    # (tenant, timestamp, seq) served no query (listings filter a tenant's events by time but page
    # them in seq order: (tenant, seq) serves that); ~90 bytes an event (docs/adr/0032). The
    # PostgreSQL twin is V8.
    db.execute(f"DROP INDEX IF EXISTS {USAGE_EVENTS}_by_tenant_time")


LEASES = "leases"


@MIGRATIONS()
def m017_leases(db: sqlite_utils.Database) -> None:
    # Quota leases (docs/adr/0045): one row per holder (a sidecar's lease) of a (tenant, metric,
    # window). `granted` and `acked` are cumulative units; what the lease still holds is
    # granted - acked. The PostgreSQL twin is V10.
    db.execute(
        f"""CREATE TABLE {LEASES} (
            tenant TEXT NOT NULL,
            code TEXT NOT NULL,
            window_start TEXT NOT NULL,
            holder TEXT NOT NULL,
            granted INTEGER NOT NULL DEFAULT 0,
            acked INTEGER NOT NULL DEFAULT 0,
            rate REAL NOT NULL DEFAULT 0,
            expires_at REAL NOT NULL,
            PRIMARY KEY (tenant, code, window_start, holder)
        ) WITHOUT ROWID"""
    )
    db.execute(f"CREATE INDEX {LEASES}_by_expiry ON {LEASES} (expires_at)")


@MIGRATIONS()
def m018_customer_email(db: sqlite_utils.Database) -> None:
    # The Stripe customer's email, for support's search (docs/console.md says what is kept):
    # `email_at` is the `created` of the newest event (or the reconcile run) that set it, so an
    # older event never overwrites a newer address. The PostgreSQL twin is V11.
    db.execute(f"ALTER TABLE {CUSTOMERS} ADD COLUMN email TEXT")
    db.execute(f"ALTER TABLE {CUSTOMERS} ADD COLUMN email_at INTEGER")
