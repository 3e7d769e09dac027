"""The migrations to exact values keep every existing value, on SQLite and PostgreSQL, and the
migrated columns then hold decimals exactly."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from tests import postgres_server
from tiergate.amounts import from_stored
from tiergate.periods import calendar_month, rfc3339
from tiergate.sidecar.replica.store import MIGRATIONS as REPLICA_MIGRATIONS
from tiergate.sync_daemon.mirror import postgres_schema
from tiergate.sync_daemon.mirror.schema import MIGRATIONS

P = rfc3339(calendar_month(datetime.now(UTC))[0])  # this month: the current_usage view shows it


def test_the_sqlite_mirror_keeps_old_counters_and_then_holds_decimals(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "mirror.db")
    MIGRATIONS.apply(db, stop_before="m010_exact_usage_values")
    db.execute("INSERT INTO usage (tenant, code, period_start, value) VALUES ('t', 'gb', ?, -7)", [P])
    db.execute(
        "INSERT INTO usage_events (tenant, transaction_id, code, timestamp, period_start, value, body, "
        "received_at, seq) VALUES ('t', 'x', 'gb', ?, ?, 12, '{}', ?, 1)",
        [P, P, P],
    )
    MIGRATIONS.apply(db)
    assert db.execute("SELECT value, typeof(value) FROM usage").fetchall() == [(-7, "integer")]
    assert db.execute("SELECT value, typeof(value) FROM usage_events").fetchall() == [(12, "integer")]
    db.execute("UPDATE usage SET value = '0.30000000000000000001'")  # text stays text: no REAL
    assert from_stored(db.execute("SELECT value FROM usage").fetchone()[0]) == Decimal(
        "0.30000000000000000001"
    )
    assert [row[0] for row in db.execute("SELECT value FROM current_usage")] in (
        [],
        ["0.30000000000000000001"],
    )


def test_the_replica_keeps_old_counters(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "replica.db")
    REPLICA_MIGRATIONS.apply(db, stop_before="m006_exact_usage")
    db.execute("INSERT INTO usage (tenant, code, period_start, value) VALUES ('t', 'gb', ?, 41)", [P])
    REPLICA_MIGRATIONS.apply(db)
    db.execute("INSERT INTO usage (tenant, code, period_start, value) VALUES ('u', 'gb', ?, '2.5')", [P])
    rows = db.execute("SELECT value, typeof(value) FROM usage ORDER BY tenant").fetchall()
    assert rows == [(41, "integer"), ("2.5", "text")]
    db.close()
    assert sqlite3.connect(tmp_path / "replica.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_postgresql_keeps_old_counters_as_numeric(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    postgres_server.reset(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        monkeypatch.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:1])
        postgres_schema.migrate(conn)
        conn.execute(
            "INSERT INTO tiergate.usage (tenant, code, period_start, value) VALUES ('t', 'gb', %s, 9)", [P]
        )
        monkeypatch.undo()
        assert postgres_schema.migrate(conn)[:2] == ["0002_exact_usage_values", "0003_usage_gauges"]
        assert conn.execute("SELECT value FROM tiergate.usage").fetchone() == (Decimal(9),)
        conn.execute("UPDATE tiergate.usage SET value = value + %s", ["0.1000000000000000001"])
        assert conn.execute("SELECT value FROM tiergate.usage").fetchone() == (
            Decimal("9.1000000000000000001"),
        )
        current = conn.execute("SELECT value FROM tiergate.current_usage").fetchall()
        assert current == [(Decimal("9.1000000000000000001"),)]  # the rebuilt view reads the new column
    postgres_server.reset(postgres_url)
