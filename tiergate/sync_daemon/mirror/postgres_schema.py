"""The mirror's PostgreSQL schema (`tiergate`): versioned migrations applied at start under an advisory lock.

The columns are the SQLite tables' (schema.py), so both adapters share every statement: times a
policy reads are RFC 3339 `Z` text, Stripe's `created` stays integer seconds, flags are 0/1.
Version 1 is the SQLite history up to m009 in one step; later changes go in both lists.
docs/mirror-sql.md documents these tables for the platform's own queries.
"""

from __future__ import annotations

import psycopg

from tiergate.usage_events import GAUGE_PERIOD_START

SCHEMA = "tiergate"
# pg_advisory_lock keys (one bigint space): migrations, and the scheduled jobs' leader.
MIGRATION_LOCK = 0x7469_6572_0001
LEADER_LOCK = 0x7469_6572_0002

_NOW = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
_MONTH = "to_char(date_trunc('month', now() AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

CURRENT_USAGE_VIEW = f"""CREATE VIEW current_usage AS
SELECT u.tenant, u.code, u.period_start, u.value, a.tier
FROM usage u LEFT JOIN accounts a ON a.tenant = u.tenant
WHERE u.period_start <= {_NOW}
  AND u.period_start >= COALESCE(a.current_period_start, {_MONTH})
  AND NOT EXISTS (
    SELECT 1 FROM usage newer
    WHERE newer.tenant = u.tenant AND newer.code = u.code
      AND newer.period_start > u.period_start
      AND newer.period_start <= {_NOW})"""

# Since V5: gauges too (`aggregation: latest`, kept under the period that never ends,
# tiergate.usage_events.GAUGE_PERIOD_START), with the time of their reading.
CURRENT_USAGE_VIEW_V5 = f"""CREATE VIEW current_usage AS
SELECT u.tenant, u.code, u.period_start, u.value, a.tier, u.gauge_at
FROM usage u LEFT JOIN accounts a ON a.tenant = u.tenant
WHERE u.period_start = '{GAUGE_PERIOD_START}'
   OR (u.period_start <= {_NOW}
       AND u.period_start >= COALESCE(a.current_period_start, {_MONTH})
       AND NOT EXISTS (
         SELECT 1 FROM usage newer
         WHERE newer.tenant = u.tenant AND newer.code = u.code
           AND newer.period_start > u.period_start
           AND newer.period_start <= {_NOW}))"""

V1 = f"""
CREATE TABLE accounts (
    tenant text PRIMARY KEY,
    stripe_customer_id text,
    subscription_id text,
    tier text NOT NULL,
    interval text,
    status text NOT NULL,
    quantity bigint NOT NULL DEFAULT 1,
    current_period_start text,
    current_period_end text,
    trial_end text,
    cancel_at_period_end integer NOT NULL DEFAULT 0,
    canceled_at text,
    past_due_since text,
    payment_attempts bigint NOT NULL DEFAULT 0,
    payment_updated bigint NOT NULL DEFAULT 0,
    stripe_updated bigint NOT NULL DEFAULT 0,
    needs_reconcile integer NOT NULL DEFAULT 0,
    unmapped_price integer NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 0,
    pending_tier text,
    pending_interval text,
    pending_at text,
    addons text
);
CREATE INDEX accounts_by_subscription ON accounts (subscription_id);
CREATE TABLE customers (
    customer_id text PRIMARY KEY,
    tenant text NOT NULL,
    deleted_at bigint
);
CREATE TABLE processed_events (
    id text PRIMARY KEY,
    type text NOT NULL,
    outcome text NOT NULL,
    received_at text NOT NULL
);
CREATE INDEX processed_events_by_received_at ON processed_events (received_at);
-- seq is assigned at commit while holding feed_head's row lock: seqs commit in order, no gaps
-- between committed rows (docs/adr/0013-gap-free-change-feed.md; since V4, numbered after
-- commit: docs/adr/0020-feed-numbered-after-commit.md).
CREATE TABLE changes (
    seq bigint PRIMARY KEY,
    tenant text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('account', 'usage', 'override')),
    op text NOT NULL CHECK (op IN ('upsert', 'delete')),
    body text,
    at text NOT NULL
);
CREATE INDEX changes_by_at ON changes (at);
CREATE TABLE feed_head (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO feed_head (id, seq) VALUES (1, 0);
CREATE TABLE usage (
    tenant text NOT NULL,
    code text NOT NULL,
    period_start text NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (tenant, code, period_start)
);
CREATE TABLE usage_events (
    tenant text NOT NULL,
    transaction_id text NOT NULL,
    code text NOT NULL,
    timestamp text NOT NULL,
    period_start text NOT NULL,
    value bigint NOT NULL,
    body text NOT NULL,
    received_at text NOT NULL,
    external_subscription_id text,
    document text,
    -- orders stored events for the sinks' cursors: taken under a lock held to commit (see usage.py)
    seq bigint,
    PRIMARY KEY (tenant, transaction_id)
);
CREATE INDEX usage_events_by_transaction ON usage_events (transaction_id);
CREATE INDEX usage_events_by_received_at ON usage_events (received_at);
CREATE UNIQUE INDEX usage_events_by_seq ON usage_events (seq);
CREATE INDEX usage_events_by_tenant_time ON usage_events (tenant, timestamp, seq);
CREATE INDEX usage_events_by_tenant_seq ON usage_events (tenant, seq);
CREATE TABLE sink_cursors (
    sink text PRIMARY KEY,
    seq bigint NOT NULL,
    updated_at text NOT NULL
);
CREATE TABLE sink_failures (
    sink text NOT NULL,
    seq bigint NOT NULL,
    error text NOT NULL,
    at text NOT NULL,
    PRIMARY KEY (sink, seq)
);
CREATE TABLE usage_periods (
    tenant text NOT NULL,
    period_start text NOT NULL,
    period_end text NOT NULL,
    PRIMARY KEY (tenant, period_start)
);
CREATE TABLE overrides (
    tenant text NOT NULL,
    feature text NOT NULL,
    value text NOT NULL,
    expires_at text,
    reason text NOT NULL,
    actor text,
    updated_at text NOT NULL,
    PRIMARY KEY (tenant, feature)
);
CREATE TABLE override_audit (
    id bigserial PRIMARY KEY,
    tenant text NOT NULL,
    feature text NOT NULL,
    action text NOT NULL CHECK (action IN ('set', 'remove')),
    value text,
    expires_at text,
    reason text NOT NULL,
    actor text,
    at text NOT NULL
);
CREATE INDEX override_audit_by_tenant ON override_audit (tenant, id);
CREATE TABLE outbound_events (
    id text PRIMARY KEY,
    type text NOT NULL,
    tenant text,
    body text NOT NULL,
    created_at text NOT NULL
);
CREATE TABLE outbound_deliveries (
    event_id text NOT NULL,
    endpoint text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts bigint NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_status bigint,
    last_error text,
    delivered_at text,
    PRIMARY KEY (event_id, endpoint)
);
CREATE INDEX outbound_due ON outbound_deliveries (status, next_attempt_at);
CREATE TABLE outbound_once (key text PRIMARY KEY, at text NOT NULL);
{CURRENT_USAGE_VIEW};
"""

# Exact decimal values (tiergate/amounts.py): events' and counters' `value` become numeric (the
# SQLite twin is m010); the view reads the column, so it is rebuilt.
V2 = f"""
DROP VIEW current_usage;
ALTER TABLE usage ALTER COLUMN value TYPE numeric;
ALTER TABLE usage_events ALTER COLUMN value TYPE numeric;
{CURRENT_USAGE_VIEW};
"""

# Gauges (`aggregation: latest`): the timestamp of the reading a gauge holds (the SQLite twin is m011).
V3 = "ALTER TABLE usage ADD COLUMN gauge_at text;"

# The change feed numbered after commit (docs/adr/0020-feed-numbered-after-commit.md): a writer
# inserts its changes with `seq` NULL (`id` keeps the insertion order) and `number_changes` gives
# every unnumbered row its position, in id order, under feed_head's row lock, held only by the
# numbering: by a writer's own transaction when the lock is free (SKIP LOCKED: it never waits), else
# by a short transaction of its own after its commit. `wait` blocks for the lock instead (callers
# that need a seq covering rows someone else may be numbering). Returns the head after numbering,
# NULL when the lock was taken and `wait` is false. Existing rows keep their seq.
V4 = f"""
ALTER TABLE changes ADD COLUMN id bigserial;
ALTER TABLE changes DROP CONSTRAINT changes_pkey;
ALTER TABLE changes ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE changes ADD CONSTRAINT changes_pkey PRIMARY KEY (id);
CREATE UNIQUE INDEX changes_by_seq ON changes (seq);
CREATE INDEX changes_unnumbered ON changes (id) WHERE seq IS NULL;
CREATE FUNCTION number_changes(wait boolean) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_head bigint;
    v_top bigint;
BEGIN
    IF wait THEN
        SELECT seq INTO v_head FROM {SCHEMA}.feed_head WHERE id = 1 FOR UPDATE;
    ELSE
        SELECT seq INTO v_head FROM {SCHEMA}.feed_head WHERE id = 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    -- A statement of its own (a snapshot taken after the lock): it sees every row committed so far.
    WITH todo AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n FROM {SCHEMA}.changes WHERE seq IS NULL
    ), numbered AS (
        UPDATE {SCHEMA}.changes c SET seq = v_head + todo.n FROM todo WHERE c.id = todo.id RETURNING c.seq
    )
    SELECT max(numbered.seq) INTO v_top FROM numbered;
    IF v_top IS NULL THEN
        RETURN v_head;
    END IF;
    UPDATE {SCHEMA}.feed_head SET seq = v_top WHERE id = 1;
    PERFORM pg_notify('tiergate_feed', v_top::text);
    RETURN v_top;
END
$$;
"""

# Gauges in the current-usage view (`gauge_at` beside them), and stored events numbered after
# they commit (docs/adr/0021-usage-events-numbered-after-commit.md): the unnumbered ones, in the
# order they get their seqs. The SQLite twin is m012. (Version 4 is another change's.)
V5 = f"""
DROP VIEW current_usage;
{CURRENT_USAGE_VIEW_V5};
CREATE INDEX usage_events_unnumbered ON usage_events (received_at, tenant, transaction_id) WHERE seq IS NULL;
"""

# Account versions with their cause: the lineage behind a decision (the SQLite twin is m013).
V6 = """
CREATE TABLE account_versions (
    id bigserial PRIMARY KEY,
    tenant text NOT NULL,
    version bigint NOT NULL,
    body text,
    cause text NOT NULL,
    event_id text,
    event_type text,
    event_at text,
    actor text,
    at text NOT NULL
);
CREATE INDEX account_versions_by_tenant ON account_versions (tenant, id);
CREATE INDEX account_versions_by_at ON account_versions (at);
"""

# Deny records shipped by sidecars: what GET /v1/decisions/{decision_id} explains (SQLite: m014).
V7 = """
CREATE TABLE decision_records (
    decision_id text PRIMARY KEY,
    tenant text NOT NULL,
    feature text NOT NULL,
    allow integer NOT NULL,
    reason text NOT NULL,
    body text NOT NULL,
    at text NOT NULL,
    received_at text NOT NULL
);
CREATE INDEX decision_records_by_tenant ON decision_records (tenant, at);
CREATE INDEX decision_records_by_received_at ON decision_records (received_at);
"""

# One index fewer per stored usage event (docs/adr/0032); the SQLite twin is m015.
V8 = "DROP INDEX IF EXISTS usage_events_by_tenant_time;"

# Quota leases (docs/adr/0045); the SQLite twin is m017_leases. Version 9 is the credits work's.
V10 = """
CREATE TABLE leases (
    tenant text NOT NULL,
    code text NOT NULL,
    window_start text NOT NULL,
    holder text NOT NULL,
    granted bigint NOT NULL DEFAULT 0,
    acked bigint NOT NULL DEFAULT 0,
    rate double precision NOT NULL DEFAULT 0,
    expires_at double precision NOT NULL,
    PRIMARY KEY (tenant, code, window_start, holder)
);
CREATE INDEX leases_by_expiry ON leases (expires_at);
"""

# The Stripe customer's email and when it was set, for support's search (SQLite: m018). (Version 9
# is the credits work's.)
V11 = """
ALTER TABLE customers ADD COLUMN email text;
ALTER TABLE customers ADD COLUMN email_at bigint;
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial", V1),
    (2, "exact_usage_values", V2),
    (3, "usage_gauges", V3),
    (4, "feed_numbered_after_commit", V4),
    (5, "current_usage_gauges_and_unnumbered_events", V5),
    (6, "account_versions", V6),
    (7, "decision_records", V7),
    (8, "one_index_fewer_per_event", V8),
    (10, "leases", V10),
    (11, "customer_email", V11),
]


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Apply what is missing, in order, each in its own transaction; two daemons starting together
    wait for each other on the lock. Returns the names applied now."""
    applied: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
    try:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations")}
        for version, name, ddl in MIGRATIONS:
            if version in done:
                continue
            with conn.transaction():
                conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
                conn.execute(ddl)
                conn.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)", [version, name]
                )
            applied.append(f"{version:04d}_{name}")
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
    return applied
