"""Several daemons on one PostgreSQL mirror: a gap-free feed under concurrent writers, webhooks
and usage split across daemons, long polls woken by another daemon's commit, leader hand-over;
the feed numbered after commit (ADR 0020): commits never wait for the numbering, changes left by
a killed writer get numbered, snapshots stay a consistent cut."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestServer

from demo.processes import Process, free_port, tiergate_command
from tests import postgres_server
from tests.integration.daemon.conftest import AUTH, FEED_TOKEN, ROOT, make_settings
from tests.integration.usage.conftest import eventually
from tests.stripe_payloads import SECRET, signed, subscription_event
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.leader import PostgresLeader
from tiergate.sync_daemon.mirror import postgres_schema
from tiergate.sync_daemon.mirror.postgres import PostgresMirror
from tiergate.sync_daemon.mirror.postgres_schema import LEADER_LOCK
from tiergate.sync_daemon.mirror.store import MirrorAccount, MirrorTxn, Sql
from tiergate.sync_daemon.state import MIRROR

# Stripe's `created` of the storm's events: recent (an event dated ahead of the clock is refused).
RECENT = int(time.time()) - 3600
UPDATED = "customer.subscription.updated.upgrade"


@pytest.fixture
def pg(postgres_url: str) -> str:
    postgres_server.reset(postgres_url)
    return postgres_url


@pytest.fixture
async def two_mirrors(pg: str) -> AsyncIterator[tuple[PostgresMirror, PostgresMirror]]:
    first, second = PostgresMirror(pg, pool_size=4), PostgresMirror(pg, pool_size=4)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


def _slow_put(account: MirrorAccount) -> Any:
    def write(txn: MirrorTxn) -> MirrorAccount:
        stored = txn.put_account(account)
        time.sleep(random.uniform(0, 0.002))  # on a worker thread: widen the window before commit
        return stored

    return write


async def test_a_follower_never_misses_a_change_while_two_daemons_write(
    two_mirrors: tuple[PostgresMirror, PostgresMirror],
) -> None:
    per_writer, tenants = 120, 8

    async def writer(mirror: PostgresMirror, name: str) -> None:
        async def one(i: int) -> None:
            account = MirrorAccount(
                tenant=f"{name}-{i % tenants}", tier="pro", status="active", quantity=i + 1
            )
            await mirror.transact(_slow_put(account))

        await asyncio.gather(*(one(i) for i in range(per_writer)))

    seen: list[int] = []
    done = asyncio.Event()

    async def follower(mirror: PostgresMirror) -> None:
        position = 0
        while True:
            batch = await mirror.changes_since(position, 25)
            seen.extend(change["seq"] for change in batch.changes)
            position = batch.last_seq
            if done.is_set() and position == await mirror.last_seq() and not batch.changes:
                return
            await asyncio.sleep(0)

    first, second = two_mirrors
    reading = asyncio.create_task(follower(second))
    await asyncio.gather(writer(first, "a"), writer(second, "b"))
    done.set()
    await asyncio.wait_for(reading, 30)
    total = 2 * per_writer  # every put changes the quantity: one change each
    assert seen == list(range(1, total + 1))
    assert await first.last_seq() == total


async def test_an_older_event_never_overwrites_a_newer_one_under_concurrency(
    two_mirrors: tuple[PostgresMirror, PostgresMirror],
) -> None:
    """Read-decide-write of one account on two daemons at once: the newest `stripe_updated` wins."""
    first, second = two_mirrors

    def newer_wins(created: int) -> Any:
        def write(txn: MirrorTxn) -> None:
            current = txn.account("t_race")
            time.sleep(random.uniform(0, 0.002))
            if current is None or current.stripe_updated < created:
                txn.put_account(
                    MirrorAccount(
                        tenant="t_race", tier="pro", status="active", quantity=created, stripe_updated=created
                    )
                )

        return write

    order = list(range(1, 101))
    random.shuffle(order)
    await asyncio.gather(*((first if n % 2 else second).transact(newer_wins(n)) for n in order))
    account = await first.transact(lambda txn: txn.account("t_race"))
    assert account is not None and (account.quantity, account.stripe_updated) == (100, 100)


# -- two daemon apps on one database --------------------------------------------------------


@pytest.fixture
async def daemons(pg: str, tmp_path: Path) -> AsyncIterator[list[str]]:
    servers = []
    for name in ("a", "b"):
        settings = make_settings(
            tmp_path / f"{name}.db", "http://127.0.0.1:9", mirror_url=pg, stripe_refetch=False
        )
        server = TestServer(create_app(settings), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
    yield [str(s.make_url("")).rstrip("/") for s in servers]
    for server in servers:
        await server.close()


async def test_a_webhook_storm_split_across_two_daemons_converges(daemons: list[str]) -> None:
    """Shuffled, duplicated and tampered copies, half to each daemon, all at once."""
    rng = random.Random(12)
    tenants = [f"t_storm{i}" for i in range(6)]
    deliveries: list[tuple[str, str, dict[str, str]]] = []
    for tenant in tenants:
        for n in range(1, 9):
            event = subscription_event(
                UPDATED, event_id=f"evt_{tenant}_{n}", created=RECENT + n, tenant=tenant, quantity=n
            )
            raw, headers = signed(event)
            deliveries += [(raw, raw, headers)] * 2  # Stripe delivers twice
            tampered = raw.replace(f'"quantity": {n}', '"quantity": 999')
            deliveries.append((tampered, raw, headers))
    rng.shuffle(deliveries)
    async with aiohttp.ClientSession() as session:

        async def deliver(index: int, body: str, headers: dict[str, str]) -> int:
            url = daemons[index % 2] + "/webhooks/stripe"
            async with session.post(url, data=body, headers=headers) as response:
                return response.status

        statuses = await asyncio.gather(*(deliver(i, d[0], d[2]) for i, d in enumerate(deliveries)))
        refused = [s for s, d in zip(statuses, deliveries, strict=True) if d[0] != d[1]]
        genuine = [s for s, d in zip(statuses, deliveries, strict=True) if d[0] == d[1]]
        assert set(refused) == {400} and set(genuine) == {200}
        for url in daemons:
            async with session.get(url + "/v1/feed/snapshot", headers=AUTH) as response:
                lines = [line for line in (await response.text()).splitlines() if '"account"' in line]
            assert len(lines) == len(tenants)
            assert all('"quantity":8' in line for line in lines), lines


async def test_usage_with_replays_sent_to_both_daemons_counts_once(daemons: list[str]) -> None:
    events = [
        {"transaction_id": f"tx-{i}", "external_customer_id": "t_usage", "code": "api_calls"}
        for i in range(300)
    ]
    replays = random.Random(3).sample(events, 30)  # 10 %
    batches = [events[i : i + 20] for i in range(0, len(events), 20)] + [replays[:15], replays[15:]]
    async with aiohttp.ClientSession() as session:

        async def send(index: int, batch: list[dict[str, Any]]) -> None:
            url = daemons[index % 2] + "/v1/usage/batch"
            # every batch goes to both daemons at once: each event arrives at least twice
            for target in (url, daemons[(index + 1) % 2] + "/v1/usage/batch"):
                async with session.post(target, json={"events": batch}, headers=AUTH) as response:
                    assert response.status == 200

        await asyncio.gather(*(send(i, b) for i, b in enumerate(batches)))
        for url in daemons:
            async with session.get(url + "/v1/usage/t_usage", headers=AUTH) as response:
                assert (await response.json())["usage"] == {"api_calls": 300}


async def test_a_long_poll_on_one_daemon_wakes_on_the_others_commit(daemons: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(daemons[1] + "/v1/feed/changes?since=0", headers=AUTH) as response:
            since = (await response.json())["last_seq"]
        poll = asyncio.create_task(
            session.get(daemons[1] + f"/v1/feed/changes?since={since}&wait=25", headers=AUTH)
        )
        await asyncio.sleep(0.2)  # the poll is waiting on daemon b
        event = [{"transaction_id": "wake", "external_customer_id": "t_wake", "code": "api_calls"}]
        async with session.post(daemons[0] + "/v1/usage/batch", json={"events": event}, headers=AUTH) as sent:
            assert sent.status == 200
        async with await asyncio.wait_for(poll, 20) as response:
            changes = (await response.json())["changes"]
    assert [c["tenant"] for c in changes] == ["t_wake"]


# -- leader election ------------------------------------------------------------------------


async def test_the_leader_hands_over_when_it_is_killed(pg: str, tmp_path: Path) -> None:
    """A real daemon process leads; kill -9 it and the other daemon takes over within a few checks."""
    check_s = 0.2
    port = free_port()
    env = {
        **os.environ,
        "TIERGATE_STRIPE_API_KEY": "sk_test_leader",
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_MIRROR_URL": pg,
        "TIERGATE_MIRROR_PATH": str(tmp_path / "unused.db"),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_LEADER_CHECK_S": str(check_s),
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
    }
    first = Process("sync-daemon", tiergate_command("sync-daemon"), env, tmp_path / "daemon.log", tmp_path)
    first.start()
    try:
        first.wait_http(f"http://127.0.0.1:{port}/readyz", lambda s: s == 200)

        async def status() -> dict[str, Any]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/v1/status", headers=AUTH) as response,
            ):
                body: dict[str, Any] = await response.json()
                return body

        async def first_leads() -> bool:
            return bool((await status())["leader"]["is_leader"])

        await eventually(first_leads, within=10)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert "tiergate_leader 1.0" in await response.text()
        second = PostgresLeader(pg, LEADER_LOCK, check_s)
        await second.start()
        try:
            await asyncio.sleep(check_s * 3)
            assert not second.is_leader  # one leader at a time
            first.kill()

            async def second_leads() -> bool:
                return second.is_leader

            # The stated bound (docs/mirror-postgres.md): a leader_check_s after PostgreSQL notices.
            await eventually(second_leads, within=check_s * 10)
        finally:
            await second.stop()
    finally:
        first.stop()


# -- the feed numbered after commit (ADR 0020) ----------------------------------------------


def _put(tenant: str, quantity: int = 1) -> Any:
    return lambda txn: txn.put_account(
        MirrorAccount(tenant=tenant, tier="pro", status="active", quantity=quantity)
    )


@contextlib.contextmanager
def feed_lock_held(url: str) -> Iterator[None]:
    """Hold feed_head's row lock from outside, as a numbering in progress does (released by rollback)."""
    with psycopg.connect(url) as conn:
        conn.execute("SELECT seq FROM tiergate.feed_head FOR UPDATE")
        try:
            yield
        finally:
            conn.rollback()


def unnumbered(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT tenant FROM tiergate.changes WHERE seq IS NULL ORDER BY id").fetchall()
    return [str(row[0]) for row in rows]


async def feed_of(mirror: PostgresMirror) -> list[tuple[int, str]]:
    batch = await mirror.changes_since(0, 1000)
    return [(c["seq"], c["tenant"]) for c in batch.changes]


class SlowNumbering(PostgresMirror):
    """Holds feed_head's lock, once, from its own transaction's numbering until `go_on` is set."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.holding = threading.Event()
        self.go_on = threading.Event()

    def _number_in_txn(self, sql: Sql) -> int | None:
        top = super()._number_in_txn(sql)
        if top is not None and not self.go_on.is_set():
            self.holding.set()
            self.go_on.wait(60)
        return top


async def test_a_commit_does_not_wait_for_another_writers_numbering(pg: str) -> None:
    slow = SlowNumbering(pg, pool_size=2, sweep_s=3600)
    other = PostgresMirror(pg, pool_size=2, sweep_s=3600)
    await slow.open()
    await other.open()
    try:
        first = asyncio.create_task(slow.transact(_put("t_slow")))
        assert await asyncio.to_thread(slow.holding.wait, 30)
        # The other daemon's write commits and returns while the first still holds the lock ...
        await asyncio.wait_for(other.transact(_put("t_other")), 30)
        assert not first.done()
        assert unnumbered(pg) == ["t_other"]  # committed, no position yet: not visible to followers
        assert await feed_of(other) == []
        # ... and the holder, after its own commit, numbers what was committed meanwhile.
        slow.go_on.set()
        await asyncio.wait_for(first, 30)
        assert await feed_of(other) == [(1, "t_slow"), (2, "t_other")]
        assert unnumbered(pg) == [] and await other.last_seq() == 2
    finally:
        slow.go_on.set()
        await slow.close()
        await other.close()


async def test_a_seq_for_read_your_writes_covers_rows_someone_else_numbers(pg: str) -> None:
    mirror = PostgresMirror(pg, pool_size=2, sweep_s=3600)
    await mirror.open()
    try:
        with feed_lock_held(pg):
            waiting = asyncio.create_task(mirror.transact_seq(_put("t_ryw")))

            async def committed() -> bool:
                return unnumbered(pg) == ["t_ryw"]

            await eventually(committed, within=30)
            assert not waiting.done()  # only a caller that needs the seq waits for the lock
        _, seq = await asyncio.wait_for(waiting, 30)
        assert await feed_of(mirror) == [(1, "t_ryw")] and seq == 1
    finally:
        await mirror.close()


async def test_trimming_never_deletes_a_change_not_numbered_yet(pg: str) -> None:
    mirror = PostgresMirror(pg, pool_size=2, sweep_s=3600)
    await mirror.open()
    try:
        await mirror.transact(_put("t_old"))
        with feed_lock_held(pg):
            await mirror.transact(_put("t_new"))  # committed unnumbered: nobody holds it afterwards
        # keep nothing, everything past its age: all but the change without a position
        assert await mirror.trim_changes(keep=0, max_age=timedelta(days=-1)) == 1
        assert unnumbered(pg) == ["t_new"]
        await mirror.transact(_put("t_next"))  # numbers what it finds unnumbered, in id order
        assert await feed_of(mirror) == [(2, "t_new"), (3, "t_next")]
    finally:
        await mirror.close()


_KILLED_WRITER = """
import asyncio, os, signal, sys
from tiergate.sync_daemon.mirror.postgres import PostgresMirror
from tiergate.sync_daemon.mirror.store import MirrorAccount


class DiesAfterCommit(PostgresMirror):
    def _settle(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # committed, not numbered, never will be by this process


async def main():
    mirror = DiesAfterCommit(sys.argv[1], pool_size=1, sweep_s=3600)
    await mirror.open()
    await mirror.transact(
        lambda txn: txn.put_account(MirrorAccount(tenant=sys.argv[2], tier="pro", status="active"))
    )


asyncio.run(main())
"""


async def killed_after_commit(url: str, tenant: str) -> None:
    """A writer process killed -9 between its commit and its numbering (it found the lock taken)."""
    with feed_lock_held(url):
        process = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", _KILLED_WRITER, url, tenant], cwd=ROOT, timeout=120
        )
    assert process.returncode == -signal.SIGKILL
    assert unnumbered(url) == [tenant]


async def test_changes_a_killed_writer_left_are_numbered_by_the_next_write(pg: str) -> None:
    mirror = PostgresMirror(pg, pool_size=2, sweep_s=0.05, stale_after_s=3600)
    await mirror.open()
    try:
        await killed_after_commit(pg, "t_killed")

        async def backlog_shown() -> bool:
            return (mirror.backlog.unnumbered, mirror.backlog.stale) == (1, 0)

        await eventually(backlog_shown, within=30)
        assert await feed_of(mirror) == []
        await mirror.transact(_put("t_next"))
        assert await feed_of(mirror) == [(1, "t_killed"), (2, "t_next")]

        async def backlog_gone() -> bool:
            return mirror.backlog.unnumbered == 0

        await eventually(backlog_gone, within=30)
    finally:
        await mirror.close()


async def test_the_sweep_numbers_what_a_killed_writer_left_and_status_shows_it(
    pg: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "a.db", "http://127.0.0.1:9", mirror_url=pg, stripe_refetch=False)
    server = TestServer(create_app(settings), host="127.0.0.1", port=0)
    await server.start_server()
    mirror = server.app[MIRROR]
    assert isinstance(mirror, PostgresMirror)
    mirror.sweep_s, mirror.stale_after_s = 0.05, 3600  # the sweep measures, and numbers nothing yet
    url = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as session:

            async def status() -> dict[str, Any]:
                async with session.get(url + "/v1/status", headers=AUTH) as response:
                    body: dict[str, Any] = (await response.json())["feed"]
                    return body

            await killed_after_commit(pg, "t_killed")

            async def backlog_shown() -> bool:
                return bool((await status())["unnumbered"]["unnumbered"] == 1)

            await eventually(backlog_shown, within=30)
            async with session.get(url + "/metrics") as response:
                assert "tiergate_feed_unnumbered_stale 0.0" in await response.text()
            mirror.stale_after_s = 0  # now it is stale: the sweep numbers it

            async def swept() -> bool:
                feed = await status()
                return bool(feed["unnumbered"]["swept"] == 1 and feed["unnumbered"]["unnumbered"] == 0)

            await eventually(swept, within=30)
            async with session.get(url + "/v1/feed/changes?since=0", headers=AUTH) as response:
                changes = (await response.json())["changes"]
            assert [(c["seq"], c["tenant"]) for c in changes] == [(1, "t_killed")]
    finally:
        await server.close()


async def test_snapshots_are_a_consistent_cut_while_two_daemons_write(
    two_mirrors: tuple[PostgresMirror, PostgresMirror],
) -> None:
    """Snapshot + the changes after it = the final state, and per tenant a follower never goes back."""
    first, second = two_mirrors
    tenants, writes_per_task, tasks_per_daemon = 6, 25, 4

    def bump(tenant: str) -> Any:
        def write(txn: MirrorTxn) -> None:
            current = txn.account(tenant)
            time.sleep(random.uniform(0, 0.002))  # widen the window before commit
            quantity = (current.quantity if current else 0) + 1
            txn.put_account(MirrorAccount(tenant=tenant, tier="pro", status="active", quantity=quantity))

        return write

    async def writer(mirror: PostgresMirror, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(writes_per_task):
            await mirror.transact(bump(f"t_cut{rng.randrange(tenants)}"))

    snapshots: list[tuple[int, dict[str, dict[str, Any]]]] = []
    writing = asyncio.gather(
        *(writer(mirror, i * 10 + n) for i, mirror in enumerate(two_mirrors) for n in range(tasks_per_daemon))
    )

    async def take_snapshots() -> None:
        n = 0
        while not writing.done():
            records = [r async for r in (first if n % 2 else second).snapshot()]
            header = records[0]
            accounts = {r["account"]["tenant"]: r["account"] for r in records if r["type"] == "account"}
            snapshots.append((header["seq"], accounts))
            n += 1

    taking = asyncio.create_task(take_snapshots())
    await writing
    await taking
    assert len(snapshots) >= 3
    changes = (await first.changes_since(0, 100_000)).changes
    assert [c["seq"] for c in changes] == list(range(1, len(changes) + 1))
    final = {account.tenant: account.feed() for account in await first.accounts()}
    assert sum(a["quantity"] for a in final.values()) == 2 * tasks_per_daemon * writes_per_task
    for seq, accounts in snapshots:
        follower = dict(accounts)
        for change in changes[seq:]:
            tenant, account = change["tenant"], change["account"]
            if tenant in follower:  # never an older (or the same) state after a newer one
                assert account["version"] > follower[tenant]["version"], (seq, change, follower[tenant])
            follower[tenant] = account
        assert follower == final


async def test_migrating_to_v4_keeps_every_position(pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror written before the feed was numbered after commit: its changes keep their seqs."""
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:3])
    with psycopg.connect(pg, autocommit=True) as conn:
        postgres_schema.migrate(conn)
        with conn.transaction():  # how ADR 13 wrote changes: numbered under the lock, in the insert
            conn.execute("UPDATE tiergate.feed_head SET seq = seq + 2")
            for seq, tenant in ((1, "t_before1"), (2, "t_before2")):
                conn.execute(
                    "INSERT INTO tiergate.changes (seq, tenant, kind, op, body, at) "
                    "VALUES (%s, %s, 'account', 'delete', NULL, '2026-11-29T00:00:00Z')",
                    [seq, tenant],
                )
    monkeypatch.undo()
    mirror = PostgresMirror(pg, pool_size=2, sweep_s=3600)
    await mirror.open()
    try:
        await mirror.transact(_put("t_after"))
        assert await feed_of(mirror) == [(1, "t_before1"), (2, "t_before2"), (3, "t_after")]
    finally:
        await mirror.close()
