"""A webhook costs the mirror as little as it can: one transaction, each lock and read once, and
it still commits when PostgreSQL ended the pooled connection it would have used."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests import postgres_server
from tests.integration.daemon.conftest import Daemon, FakeStripe, make_settings
from tests.integration.mirror.test_postgres_round_trips import _kill_write_connections
from tests.stripe_payloads import subscription_event
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.mirror.postgres import PostgresTxn
from tiergate.sync_daemon.mirror.store import Cursor, MirrorTxn

CREATED = "customer.subscription.created"
UPDATED = "customer.subscription.updated.upgrade"
T0 = 1_767_225_601


def _record_locked_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every (lock kind, key) a transaction reads under, on either backend."""
    reads: list[tuple[str, str]] = []
    for cls in (MirrorTxn, PostgresTxn):
        original = cls.locked_read

        def spy(
            txn: MirrorTxn,
            kind: str,
            key: str,
            sql: str,
            params: Any,
            original: Callable[..., Cursor] = original,
        ) -> Cursor:
            reads.append((kind, key))
            return original(txn, kind, key, sql, params)

        monkeypatch.setattr(cls, "locked_read", spy)
    return reads


def _count_transactions(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    transact = daemon.mirror.transact

    async def counted(fn: Callable[[MirrorTxn], Any]) -> Any:
        count[0] += 1
        return await transact(fn)

    monkeypatch.setattr(daemon.mirror, "transact", counted)
    return count


async def test_a_webhook_is_one_transaction_that_reads_its_event_and_account_once(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = _count_transactions(daemon, monkeypatch)
    reads = _record_locked_reads(monkeypatch)
    assert (await daemon.post(subscription_event(CREATED, event_id="evt_1")))[1]["outcome"] == "applied"
    status, body = await daemon.post(
        subscription_event(UPDATED, event_id="evt_2", created=T0 + 60, quantity=4)
    )
    assert (status, body["outcome"]) == (200, "applied")
    assert transactions == [2]
    # put_account decides on the account read before it, not on a second read
    assert reads == [("event", "evt_1"), ("tenant", "t_alice"), ("event", "evt_2"), ("tenant", "t_alice")]
    account = await daemon.account("t_alice")
    assert account is not None and (account.quantity, account.version) == (4, 2)


async def test_a_duplicate_webhook_reads_only_its_event_id(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    await daemon.post(subscription_event(CREATED, event_id="evt_1"))
    reads = _record_locked_reads(monkeypatch)
    assert (await daemon.post(subscription_event(CREATED, event_id="evt_1")))[1]["outcome"] == "duplicate"
    assert reads == [("event", "evt_1")]


@pytest.fixture
async def pg_daemon(
    aiohttp_client: Any, postgres_url: str, fake_stripe: FakeStripe, tmp_path: Path
) -> Daemon:
    postgres_server.empty_mirror(postgres_url)
    settings = make_settings(tmp_path / "mirror.db", fake_stripe.url, mirror_url=SecretStr(postgres_url))
    return Daemon(await aiohttp_client(create_app(settings)), fake_stripe)


async def test_a_webhook_commits_after_postgresql_ended_its_pooled_connection(
    pg_daemon: Daemon, postgres_url: str
) -> None:
    assert (await pg_daemon.post(subscription_event(CREATED, event_id="evt_1")))[1]["outcome"] == "applied"
    assert _kill_write_connections(postgres_url) >= 1
    update = subscription_event(UPDATED, event_id="evt_2", created=T0 + 60, quantity=4)
    with capture_logs() as logs:
        status, body = await pg_daemon.post(update)
    assert (status, body["outcome"]) == (200, "applied")
    assert "mirror_connection_lost" in [e["event"] for e in logs]
    assert (await pg_daemon.post(update))[1]["outcome"] == "duplicate"
    batch = await pg_daemon.mirror.changes_since(0, 100)
    assert [c["account"]["quantity"] for c in batch.changes] == [1, 4]  # nothing lost, nothing twice
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        events = conn.execute("SELECT id, outcome FROM tiergate.processed_events ORDER BY id").fetchall()
    assert events == [("evt_1", "applied"), ("evt_2", "applied")]
