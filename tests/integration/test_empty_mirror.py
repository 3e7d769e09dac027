"""`postgres_server.empty_mirror`: what each PostgreSQL test starts on equals a freshly migrated schema."""

from __future__ import annotations

from typing import Any

import psycopg

from tests import postgres_server


def _contents(url: str) -> dict[str, Any]:
    """Every table's rows and every sequence's position (migrations by version and name only)."""
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'tiergate'").fetchall()
        found: dict[str, Any] = {
            table: sorted(conn.execute(f'SELECT * FROM tiergate."{table}"').fetchall())
            for (table,) in tables
            if table != "schema_migrations"
        }
        found["schema_migrations"] = conn.execute(
            "SELECT version, name FROM tiergate.schema_migrations ORDER BY version"
        ).fetchall()
        found["sequences"] = conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'tiergate' ORDER BY 1"
        ).fetchall()
        return found


def test_an_emptied_mirror_is_a_freshly_migrated_one(postgres_url: str) -> None:
    postgres_server.reset(postgres_url)
    postgres_server.empty_mirror(postgres_url)  # no schema: dropped and migrated
    fresh = _contents(postgres_url)
    assert fresh["feed_head"] == [(1, 0)] and fresh["schema_migrations"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # what a test leaves behind
        conn.execute("UPDATE tiergate.feed_head SET seq = 7")
        conn.execute("INSERT INTO tiergate.customers (customer_id, tenant) VALUES ('cus_1', 't')")
        conn.execute(
            "INSERT INTO tiergate.override_audit (tenant, feature, action, reason, at) "
            "VALUES ('t', 'sso', 'set', 'test', '2026-01-01T00:00:00Z')"
        )
    assert _contents(postgres_url) != fresh
    postgres_server.empty_mirror(postgres_url)  # rows put back, the sequence restarted
    assert _contents(postgres_url) == fresh

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a test that changed the structure
        conn.execute("ALTER TABLE tiergate.accounts ADD COLUMN leftover integer")
    postgres_server.empty_mirror(postgres_url)  # dropped and migrated again
    assert _contents(postgres_url) == fresh
    with psycopg.connect(postgres_url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'tiergate' AND table_name = 'accounts'"
        ).fetchall()
    assert ("leftover",) not in columns
