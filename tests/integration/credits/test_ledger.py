"""The credits ledger on both mirror backends: exact debits, burn order, idempotency, expiry, void, debt."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MirrorBackend
from tests.credits_model import amounts, model_grants, one_grant, spend
from tiergate.feed import FeedChange
from tiergate.sync_daemon.credits.ledger import (
    NewGrant,
    add_grant,
    debit,
    expire_due,
    ledger_page,
    rebuilt_remaining,
    tenant_grants,
    type_balance,
    void_grant,
)
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.store import Mirror, MirrorTxn

NOW = datetime(2026, 12, 1, tzinfo=UTC)
AI = "ai_credits"


@pytest.fixture
async def mirror(mirror_backend: MirrorBackend) -> AsyncIterator[Mirror]:
    store = mirror_for(mirror_backend.location)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def grant(amount: int | Decimal | str, ref: str, **fields: object) -> NewGrant:
    value = Decimal(amount) if isinstance(amount, str) else amount
    return NewGrant(
        **{  # type: ignore[arg-type]  # the test's defaults, overridden per call
            "tenant": "t_1",
            "credit_type": AI,
            "amount": value,
            "category": "paid",
            "source": "manual",
            "source_ref": ref,
            **fields,
        }
    )


async def give(mirror: Mirror, new: NewGrant, now: datetime = NOW) -> str:
    made, _ = await mirror.transact(lambda txn: add_grant(txn, new, now))
    return made.id


async def balance_of(mirror: Mirror, now: datetime = NOW, tenant: str = "t_1") -> object:
    return (await mirror.read(lambda sql: type_balance(sql, tenant, AI, now))).balance


async def assert_ledger_rebuilds(mirror: Mirror, tenant: str = "t_1") -> None:
    grants = await mirror.read(lambda sql: tenant_grants(sql, tenant))
    rebuilt = await mirror.read(lambda sql: rebuilt_remaining(sql, tenant))
    assert {g.id: g.remaining for g in grants} == rebuilt


async def test_a_thousand_debits_of_a_thousandth_come_out_exact(mirror: Mirror) -> None:
    await give(mirror, grant(5, "five"))

    def thousand(txn: MirrorTxn) -> None:
        for n in range(1000):
            debit(txn, "t_1", AI, f"tx_{n}", Decimal("0.001"), NOW)

    await mirror.transact(thousand)
    assert await balance_of(mirror) == 4
    await assert_ledger_rebuilds(mirror)
    entries = await mirror.read(lambda sql: ledger_page(sql, "t_1", 0, 2000))
    assert [e["amount"] for e in entries[1:]] == ["-0.001"] * 1000
    assert entries[0]["kind"] == "grant" and entries[0]["amount"] == 5


async def test_a_replayed_usage_transaction_debits_once(mirror: Mirror) -> None:
    await give(mirror, grant(10, "ten"))
    first = await mirror.transact(lambda txn: debit(txn, "t_1", AI, "tx_same", 3, NOW))
    again = await mirror.transact(lambda txn: debit(txn, "t_1", AI, "tx_same", 3, NOW))
    assert first is not None and (first.before, first.after) == (10, 7)
    assert again is None
    assert await balance_of(mirror) == 7


async def test_the_same_source_ref_grants_once(mirror: Mirror) -> None:
    first = await give(mirror, grant(10, "key-1"))
    second = await give(mirror, grant(10, "key-1"))
    assert first == second and await balance_of(mirror) == 10


async def test_burn_order_priority_then_expiry_then_promotional_then_oldest(mirror: Mirror) -> None:
    later = NOW + timedelta(days=30)
    soon = NOW + timedelta(days=3)
    ids = {
        "late_paid": await give(mirror, grant(5, "a", expires_at=later)),
        "never": await give(mirror, grant(5, "b")),
        "soon_paid": await give(mirror, grant(5, "c", expires_at=soon)),
        "soon_promo": await give(mirror, grant(5, "d", expires_at=soon, category="promotional")),
        "first_prio": await give(mirror, grant(5, "e", priority=10)),
    }
    await mirror.transact(lambda txn: debit(txn, "t_1", AI, "big", 17, NOW))
    left = {g.id: g.remaining for g in await mirror.read(lambda sql: tenant_grants(sql, "t_1"))}
    assert [left[ids[name]] for name in ("first_prio", "soon_promo", "soon_paid", "late_paid", "never")] == [
        0,
        0,
        0,
        3,
        5,
    ]
    await assert_ledger_rebuilds(mirror)


async def test_expiry_takes_what_was_left_and_only_once(mirror: Mirror) -> None:
    await give(mirror, grant(10, "a", expires_at=NOW + timedelta(days=1)))
    await give(mirror, grant(4, "b"))
    await mirror.transact(lambda txn: debit(txn, "t_1", AI, "tx", 6, NOW))
    assert await balance_of(mirror) == 8
    # Past the expiry the balance no longer counts the grant, even before the sweep ran.
    assert await balance_of(mirror, NOW + timedelta(days=1)) == 4
    expired = await mirror.transact(lambda txn: expire_due(txn, NOW + timedelta(days=1)))
    assert [(g.remaining, m.before, m.after) for g, m in expired] == [(4, 8, 4)]  # 4 expired: 8 -> 4
    assert await mirror.transact(lambda txn: expire_due(txn, NOW + timedelta(days=2))) == []
    entries = await mirror.read(lambda sql: ledger_page(sql, "t_1", 0, 100))
    assert [(e["kind"], e["amount"]) for e in entries] == [
        ("grant", 10),
        ("grant", 4),
        ("debit", -6),
        ("expire", -4),
    ]
    await assert_ledger_rebuilds(mirror)


async def test_void_takes_only_the_unspent_part(mirror: Mirror) -> None:
    voided_id = await give(mirror, grant("2.5", "a"))
    await mirror.transact(lambda txn: debit(txn, "t_1", AI, "tx", Decimal("1.25"), NOW))
    result = await mirror.transact(lambda txn: void_grant(txn, "t_1", voided_id, NOW))
    assert result is not None and result.voided == Decimal("1.25") and result.grant.state == "voided"
    assert result.moved is not None and (result.moved.before, result.moved.after) == (Decimal("1.25"), 0)
    again = await mirror.transact(lambda txn: void_grant(txn, "t_1", voided_id, NOW))
    assert again is not None and again.voided == 0 and again.moved is None
    assert await mirror.transact(lambda txn: void_grant(txn, "t_1", "cg_nope", NOW)) is None
    assert await balance_of(mirror) == 0
    await assert_ledger_rebuilds(mirror)


async def test_usage_beyond_the_balance_is_a_debt_the_next_grant_repays(mirror: Mirror) -> None:
    await give(mirror, grant(2, "a"))
    moved = await mirror.transact(lambda txn: debit(txn, "t_1", AI, "tx", 5, NOW))
    assert moved is not None and moved.after == -3
    await give(mirror, grant(10, "b"))
    state = await mirror.read(lambda sql: type_balance(sql, "t_1", AI, NOW))
    assert (state.balance, state.debt) == (7, 0)
    await assert_ledger_rebuilds(mirror)


async def test_each_change_reaches_the_feed_with_the_types_grants(mirror: Mirror) -> None:
    await give(mirror, grant(10, "a", expires_at=NOW + timedelta(days=1)))
    await mirror.transact(lambda txn: debit(txn, "t_1", AI, "tx", Decimal("0.5"), NOW))
    batch = await mirror.changes_since(0, 100)
    changes = [FeedChange.model_validate(c) for c in batch.changes]
    assert [(c.kind, c.op, c.tenant) for c in changes] == [("credits", "upsert", "t_1")] * 2
    last = changes[-1].credits
    assert last is not None and last.credit_type == AI
    assert [(g.remaining, g.expires_at) for g in last.grants] == [(Decimal("9.5"), NOW + timedelta(days=1))]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=st.lists(one_grant, min_size=1, max_size=6), debits=st.lists(amounts, min_size=1, max_size=4))
async def test_the_ledger_burns_as_the_reference_model(
    mirror: Mirror, drawn: list[tuple[Decimal, str, int, int, int | None]], debits: list[Decimal]
) -> None:
    tenant = "t_" + uuid.uuid4().hex[:12]  # one mirror for every example: a tenant of its own each
    grants = model_grants(drawn)
    ids: dict[str, str] = {}
    for g in grants:
        new = grant(
            g.remaining,
            g.name,
            tenant=tenant,
            category=g.category,
            priority=g.priority,
            effective_at=g.effective_at,
            expires_at=g.expires_at,
        )
        ids[g.name] = await give(mirror, new, NOW - timedelta(days=10))
    for n, amount in enumerate(debits):
        taken, _ = spend(grants, amount, NOW)
        for g in grants:
            g.remaining -= taken.get(g.name, Decimal(0))
        await mirror.transact(
            partial(debit, tenant=tenant, credit_type=AI, transaction_id=f"tx{n}", amount=amount, now=NOW)
        )
    held = {g.id: g.remaining for g in await mirror.read(lambda sql: tenant_grants(sql, tenant))}
    assert {name: Decimal(held[ids[name]]) for name in ids} == {g.name: g.remaining for g in grants}
    await assert_ledger_rebuilds(mirror, tenant)
