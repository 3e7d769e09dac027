"""`tiergate mirror copy` between SQLite and a real PostgreSQL, both ways: counts, checksums, feed
positions carried over (a follower continues), a non-empty target refused, a killed copy rolled back."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from demo.processes import tiergate_command
from tests import postgres_server
from tests.integration.daemon.conftest import ROOT
from tests.integration.usage.conftest import eventually
from tiergate.amounts import Amount
from tiergate.catalog import load_catalog
from tiergate.errors import MirrorError
from tiergate.sync_daemon.leader import PostgresLeader
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.copy import TableSum, copy_mirror, open_end
from tiergate.sync_daemon.mirror.overrides import Override, remove_override, set_override
from tiergate.sync_daemon.mirror.postgres import PostgresMirror
from tiergate.sync_daemon.mirror.postgres_schema import LEADER_LOCK
from tiergate.sync_daemon.mirror.postgres_schema import MIGRATIONS as PG_MIGRATIONS
from tiergate.sync_daemon.mirror.schema import MIGRATIONS
from tiergate.sync_daemon.mirror.store import CustomerLink, MirrorAccount, MirrorTxn
from tiergate.sync_daemon.mirror.usage import ingest_events
from tiergate.usage_events import ValidEvent

TENANTS = 40
EVENTS = 600
BIG = 20_000  # events: the copy is still running after its first usage_events batch


@pytest.fixture
def pg(postgres_url: str) -> str:
    postgres_server.reset(postgres_url)
    return postgres_url


def _value(i: int) -> Amount:
    """Whole values, exact decimals and corrections (below zero): every form an amount is kept in."""
    return Decimal("2.5") if i % 7 == 0 else -1 if i % 11 == 0 else 1 + i % 3


def _fill(txn: MirrorTxn, first: int, events: int, feature: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(TENANTS):
        tenant = f"t{i:03d}"
        txn.link_customer(CustomerLink(f"cus_{i}", tenant))
        txn.put_account(
            MirrorAccount(
                tenant=tenant,
                tier="pro" if i % 2 else "starter",
                status="active",
                stripe_customer_id=f"cus_{i}",
                subscription_id=f"sub_{i}",
                quantity=i + 1,
                current_period_start=now - timedelta(days=3),
                current_period_end=now + timedelta(days=27),
                addons=(("seats", 2),) if i % 5 == 0 else (),
            )
        )
        txn.record_event(f"evt_{first}_{i}", "customer.subscription.updated", "applied")
    batch = [
        ValidEvent(
            f"t{i % TENANTS:03d}", f"tx-{first}-{i}", "api_calls", now - timedelta(minutes=i % 50), _value(i)
        )
        for i in range(events)
    ]
    ingest_events(txn, batch, now)
    txn.sql.execute(
        "INSERT INTO sink_cursors (sink, seq, updated_at) VALUES ('lago', 7, '2026-11-01T00:00:00Z') "
        "ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq"
    )
    set_override(txn, Override("t001", feature, True, None, "support grant", "ana"))
    set_override(txn, Override("t002", feature, True, now + timedelta(days=9), "trial", None))
    remove_override(txn, "t002", feature, "trial over", "bo")


async def fill(location: str, first: int = 0, events: int = EVENTS) -> int:
    """A mirror filled through the daemon's own transactions; returns its feed position."""
    feature = sorted(load_catalog(ROOT / "plans" / "plans.yaml").features)[0]
    mirror = mirror_for(location)
    await mirror.open()
    try:
        await mirror.transact(lambda txn: _fill(txn, first, events, feature))
        return await mirror.last_seq()
    finally:
        await mirror.close()


def sums(location: str) -> tuple[dict[str, TableSum], dict[str, int]]:
    """Every table's count and checksum, and the positions, read with the copy's own functions."""
    end = open_end(location, create=False)
    try:
        end.begin(write=False)
        tables = end.tables()
        found = {}
        for table, columns in tables.items():
            total = TableSum()
            for rows in end.batches(table, columns, 500):
                total.add(columns, rows)
            found[table] = total
        positions = end.positions()
        end.finish(commit=False)
        return found, positions
    finally:
        end.close()


def run_copy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tiergate_command("mirror", "copy", *args), capture_output=True, text=True, timeout=300, cwd=ROOT
    )


async def test_sqlite_to_postgresql_and_back_keeps_every_row_and_position(tmp_path: Path, pg: str) -> None:
    source = f"sqlite:{tmp_path / 'mirror.db'}"
    position = await fill(source)
    before = sums(source)

    done = run_copy("--from", source, "--to", pg)
    assert done.returncode == 0, done.stderr
    assert "verified:" in done.stdout and f"position of changes: {position} =" in done.stdout
    assert sums(pg) == before
    assert before[0]["usage_events"].rows == EVENTS and before[0]["accounts"].rows == TENANTS

    back = f"sqlite:{tmp_path / 'back.db'}"
    done = run_copy("--from", pg, "--to", back)
    assert done.returncode == 0, done.stderr
    assert sums(back) == before  # the round trip changed nothing, checksums included
    # Each end is at this version's schema, recorded by its own migrations.
    with psycopg.connect(pg) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM tiergate.schema_migrations ORDER BY 1")]
    assert versions == [version for version, _, _ in PG_MIGRATIONS]
    assert MIGRATIONS.pending(sqlite_utils.Database(tmp_path / "back.db")) == []


async def test_a_follower_continues_on_the_copy(tmp_path: Path, pg: str) -> None:
    """Seqs and the feed head are carried over: changes after the copy number on from the source's."""
    source = f"sqlite:{tmp_path / 'mirror.db'}"
    position = await fill(source)
    copy_mirror(source, pg)
    mirror = mirror_for(pg)
    await mirror.open()
    try:
        assert mirror.seq == position
        earlier = await mirror.changes_since(position - 3, 100)
        assert [c["seq"] for c in earlier.changes] == [position - 2, position - 1, position]
        await mirror.transact(
            lambda txn: txn.put_account(MirrorAccount(tenant="t_after", tier="pro", status="active"))
        )
        after = await mirror.changes_since(position, 100)
        assert [(c["seq"], c["tenant"]) for c in after.changes] == [(position + 1, "t_after")]
        audit = await mirror.read(lambda sql: sql.execute("SELECT max(id) FROM override_audit").fetchone()[0])
        assert audit == 3
    finally:
        await mirror.close()


async def test_postgresql_to_sqlite_and_sqlite_to_sqlite(tmp_path: Path, pg: str) -> None:
    position = await fill(pg)
    first = f"sqlite:{tmp_path / 'first.db'}"
    second = f"sqlite:{tmp_path / 'second.db'}"
    copy_mirror(pg, first)
    copy_mirror(first, second, batch_size=7)
    assert sums(first) == sums(pg) == sums(second)
    mirror = mirror_for(second)
    await mirror.open()
    try:
        _, seq = await mirror.transact_seq(
            lambda txn: txn.put_account(MirrorAccount(tenant="t_after", tier="pro", status="active"))
        )
        assert seq == position + 1
    finally:
        await mirror.close()


async def test_changes_not_numbered_yet_are_numbered_before_the_copy(tmp_path: Path, pg: str) -> None:
    """A writer that found the feed lock taken commits its changes without a position (ADR 0020);
    copying from that database numbers them first, so the copy carries them, numbered."""
    position = await fill(pg)
    mirror = PostgresMirror(pg, sweep_s=3600)
    await mirror.open()
    try:
        with psycopg.connect(pg) as holder:
            holder.execute("SELECT seq FROM tiergate.feed_head FOR UPDATE")
            await mirror.transact(
                lambda txn: txn.put_account(MirrorAccount(tenant="t_late", tier="pro", status="active"))
            )
            holder.rollback()
    finally:
        await mirror.close()
    with psycopg.connect(pg) as conn:
        assert conn.execute("SELECT count(*) FROM tiergate.changes WHERE seq IS NULL").fetchone() == (1,)
    target = f"sqlite:{tmp_path / 'copy.db'}"
    report = copy_mirror(pg, target)
    assert report.verified and report.source_positions["changes"] == position + 1
    copied = mirror_for(target)
    await copied.open()
    try:
        batch = await copied.changes_since(position, 10)
        assert [(c["seq"], c["tenant"]) for c in batch.changes] == [(position + 1, "t_late")]
    finally:
        await copied.close()


async def test_a_target_with_rows_is_refused_unless_forced(tmp_path: Path, pg: str) -> None:
    source = f"sqlite:{tmp_path / 'mirror.db'}"
    await fill(source)
    await fill(pg, first=1, events=50)
    held = sums(pg)

    refused = run_copy("--from", source, "--to", pg)
    assert refused.returncode == 1
    assert (
        "is not empty" in refused.stderr and "accounts: 40" in refused.stderr and "--force" in refused.stderr
    )
    assert sums(pg) == held  # untouched

    forced = run_copy("--from", source, "--to", pg, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replaced" in forced.stdout
    assert sums(pg) == sums(source)


def test_bad_locations_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    missing = run_copy("--from", f"sqlite:{tmp_path / 'none.db'}", "--to", f"sqlite:{tmp_path / 'x.db'}")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    same = run_copy("--from", f"sqlite:{tmp_path / 'x.db'}", "--to", str(tmp_path / "x.db"))
    assert same.returncode == 1 and "the same mirror" in same.stderr
    scheme = run_copy("--from", "mysql://db/x", "--to", f"sqlite:{tmp_path / 'x.db'}")
    assert scheme.returncode == 1 and "mysql://… is not a mirror" in scheme.stderr
    unreachable = run_copy(
        "--from", "postgresql://nobody@127.0.0.1:9/x", "--to", f"sqlite:{tmp_path / 'x.db'}"
    )
    assert unreachable.returncode == 1 and "cannot be opened" in unreachable.stderr
    assert not (tmp_path / "x.db").exists()  # nothing was created on the way to an error
    assert "Traceback" not in missing.stderr + same.stderr + scheme.stderr + unreachable.stderr


async def test_copying_into_a_database_a_daemon_leads_is_refused(tmp_path: Path, pg: str) -> None:
    source = f"sqlite:{tmp_path / 'mirror.db'}"
    await fill(source, events=10)
    leader = PostgresLeader(pg, LEADER_LOCK, 0.1)
    await leader.start()
    try:
        await eventually(lambda: _true(leader.is_leader))
        with pytest.raises(MirrorError, match="a tiergate daemon is running"):
            copy_mirror(source, pg)
    finally:
        await leader.stop()
    assert sums(pg)[0]["accounts"].rows == 0


async def _true(value: bool) -> bool:
    return value


# -- a copy killed half-way ---------------------------------------------------------------


def _killed_mid_copy(source: str, target: str) -> list[str]:
    """Start a copy in small batches, kill -9 it once it has written some rows; its output so far."""
    process = subprocess.Popen(
        tiergate_command("mirror", "copy", "--from", source, "--to", target, "--batch-size", "50"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:
        seen.append(line)
        if "usage_events: " in line and "usage_events: 0/" not in line:
            break
    assert process.poll() is None, f"the copy ended before the kill: {seen}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    assert not any(line.startswith("verified") for line in seen)
    return seen


async def test_a_copy_killed_half_way_leaves_postgresql_empty_and_can_run_again(
    tmp_path: Path, pg: str
) -> None:
    big_source = f"sqlite:{tmp_path / 'big.db'}"
    await fill(big_source, events=BIG)
    _killed_mid_copy(big_source, pg)
    with psycopg.connect(pg) as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM tiergate.{t}").fetchone()
            for t in ("accounts", "usage_events")
        ]
        head = conn.execute("SELECT seq FROM tiergate.feed_head").fetchone()
    assert counts == [(0,), (0,)] and head == (0,)  # rolled back: nothing half-copied is visible
    again = run_copy("--from", big_source, "--to", pg)  # no --force needed: the target is empty
    assert again.returncode == 0, again.stderr
    assert sums(pg) == sums(big_source)


async def test_a_copy_killed_half_way_leaves_sqlite_empty_and_can_run_again(tmp_path: Path, pg: str) -> None:
    await fill(pg, events=BIG)
    target = tmp_path / "target.db"
    _killed_mid_copy(pg, f"sqlite:{target}")
    with sqlite3.connect(target) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in ("accounts", "usage_events")]
    assert counts == [(0,), (0,)]
    again = run_copy("--from", pg, "--to", f"sqlite:{target}")
    assert again.returncode == 0, again.stderr
    assert sums(f"sqlite:{target}") == sums(pg)
