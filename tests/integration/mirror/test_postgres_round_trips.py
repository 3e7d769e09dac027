"""The PostgreSQL adapter's shortcuts keep its guarantees: a lock and the read after it share one
round trip yet the read sees what the lock's previous holder committed; upserts sent with the
next statement are still stored, in order, or not at all; a transaction whose pooled connection
died is run again on a fresh one, once, and never half-stored."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from tests import postgres_server
from tests.conftest import MirrorBackend
from tests.integration.usage.conftest import eventually
from tiergate.errors import MirrorError
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.postgres import PostgresMirror
from tiergate.sync_daemon.mirror.store import CustomerLink, MirrorAccount, MirrorTxn

ALICE = MirrorAccount(tenant="t_alice", tier="pro", status="active", stripe_updated=100)
WAIT_S = 30.0


@pytest.fixture
async def mirror(postgres_url: str) -> AsyncIterator[PostgresMirror]:
    postgres_server.empty_mirror(postgres_url)
    store = PostgresMirror(postgres_url, pool_size=4)
    await store.open()
    yield store
    await store.close()


async def test_upserts_sent_late_are_seen_by_the_next_read_and_stored_at_commit(
    mirror_backend: MirrorBackend,
) -> None:
    store = mirror_for(mirror_backend.location)
    await store.open()
    try:

        def link_then_read(txn: MirrorTxn) -> CustomerLink | None:
            txn.link_customer(CustomerLink("cus_1", "t_alice"))
            txn.link_customer(CustomerLink("cus_1", "t_bob"))  # the later one wins
            return txn.customer("cus_1")

        assert await store.transact(link_then_read) == CustomerLink("cus_1", "t_bob")
        await store.transact(
            lambda txn: txn.link_customer(CustomerLink("cus_2", "t_carol"))
        )  # nothing after it
        assert await store.customers() == {"cus_1": "t_bob", "cus_2": "t_carol"}

        def link_then_fail(txn: MirrorTxn) -> None:
            txn.link_customer(CustomerLink("cus_3", "t_dan"))
            raise RuntimeError("before the commit")

        with pytest.raises(RuntimeError):
            await store.transact(link_then_fail)
        assert "cus_3" not in await store.customers()
    finally:
        await store.close()


async def test_an_event_id_read_with_its_customer_gives_both(mirror_backend: MirrorBackend) -> None:
    store = mirror_for(mirror_backend.location)
    await store.open()
    try:
        await store.transact(lambda txn: txn.link_customer(CustomerLink("cus_1", "t_alice", deleted_at=5)))
        await store.transact(lambda txn: txn.record_event("evt_1", "x", "applied"))

        def read(txn: MirrorTxn, event_id: str, customer_id: str) -> tuple[bool, CustomerLink | None]:
            return txn.seen(event_id, customer_id=customer_id), txn.customer(customer_id)

        assert await store.transact(lambda txn: read(txn, "evt_1", "cus_1")) == (
            True,
            CustomerLink("cus_1", "t_alice", deleted_at=5),
        )
        assert await store.transact(lambda txn: read(txn, "evt_2", "cus_2")) == (False, None)
    finally:
        await store.close()


def _advisory_waiters(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return int(found.fetchone()[0])  # type: ignore[index]


async def _second_reads_after_first_commits(
    mirror: PostgresMirror,
    url: str,
    first_writes: Callable[[MirrorTxn], Any],
    read: Callable[[MirrorTxn], Any],
) -> Any:
    """`first_writes` holds its locks until the second transaction waits on one; returns what `read` saw."""
    holding, release = threading.Event(), threading.Event()

    def first(txn: MirrorTxn) -> None:
        first_writes(txn)
        holding.set()
        assert release.wait(WAIT_S)

    first_done = asyncio.create_task(mirror.transact(first))
    assert await asyncio.to_thread(holding.wait, WAIT_S)
    second_done = asyncio.create_task(mirror.transact(read))

    async def second_waits() -> bool:
        return await asyncio.to_thread(_advisory_waiters, url) > 0

    await eventually(second_waits, within=WAIT_S)
    release.set()
    await first_done
    return await second_done


async def test_an_account_read_after_waiting_on_its_lock_sees_the_holders_commit(
    mirror: PostgresMirror, postgres_url: str
) -> None:
    def first(txn: MirrorTxn) -> None:
        txn.account(ALICE.tenant)  # takes the tenant's lock
        txn.put_account(ALICE)

    seen = await _second_reads_after_first_commits(
        mirror, postgres_url, first, lambda txn: txn.account(ALICE.tenant)
    )
    assert seen is not None and (seen.tier, seen.version) == ("pro", 1)


async def test_an_event_id_read_after_waiting_on_its_lock_sees_the_holders_commit(
    mirror: PostgresMirror, postgres_url: str
) -> None:
    def first(txn: MirrorTxn) -> None:
        assert not txn.seen("evt_1")  # takes the event's lock
        txn.record_event("evt_1", "customer.subscription.updated", "applied")

    assert await _second_reads_after_first_commits(mirror, postgres_url, first, lambda txn: txn.seen("evt_1"))


async def test_a_transaction_whose_connection_was_killed_runs_again_on_a_fresh_one(
    mirror: PostgresMirror, postgres_url: str
) -> None:
    await mirror.transact(lambda txn: txn.put_account(ALICE))
    killed = _kill_write_connections(postgres_url)
    assert killed >= 1
    with capture_logs() as logs:
        stored = await mirror.transact(lambda txn: txn.put_account(ALICE.replace(quantity=2)))
    assert stored.version == 2
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["mirror_connection_lost"]
    batch = await mirror.changes_since(0, 100)
    assert [c["account"]["quantity"] for c in batch.changes] == [1, 2]  # nothing lost, nothing twice


async def test_a_connection_that_dies_twice_fails_the_transaction_and_stores_nothing(
    mirror: PostgresMirror,
) -> None:
    attempts = 0

    def dies(txn: MirrorTxn) -> None:
        nonlocal attempts
        attempts += 1
        txn.put_account(ALICE)
        txn.sql.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with capture_logs(), pytest.raises(MirrorError, match="terminat"):
        await mirror.transact(dies)
    assert attempts == 2  # the first try and one more, no loop
    assert await mirror.accounts() == [] and (await mirror.changes_since(0, 10)).changes == []
    assert (await mirror.transact(lambda txn: txn.put_account(ALICE))).version == 1  # and it recovers


async def test_a_query_error_is_not_retried(mirror: PostgresMirror) -> None:
    attempts = 0

    def cancelled(txn: MirrorTxn) -> None:
        nonlocal attempts
        attempts += 1
        txn.sql.execute("SET LOCAL statement_timeout = 1")
        txn.sql.execute("SELECT pg_sleep(1)")

    with pytest.raises(MirrorError, match="timeout"):
        await mirror.transact(cancelled)
    assert attempts == 1


def _kill_write_connections(url: str) -> int:
    """End the backends of the mirror's write pool (idle in the pool now) and wait until they are gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            int(row[0])
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'tiergate-mirror-write'"
            ).fetchall()
        ]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s, %s)", [pid, int(WAIT_S * 1000)])
    return len(pids)
