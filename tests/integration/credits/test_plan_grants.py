"""Plan grants under a controlled clock on both mirror backends: monthly inside an annual plan,
per period, rollover capped at the boundary, expiry, once per cycle whatever runs first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import MirrorBackend
from tiergate.catalog import Catalog, load_catalog, parse_catalog
from tiergate.sync_daemon.credits.jobs import sweep
from tiergate.sync_daemon.credits.ledger import (
    debit,
    ledger_page,
    rebuilt_remaining,
    tenant_grants,
    type_balance,
)
from tiergate.sync_daemon.credits.usage import debit_usage
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.store import Mirror, MirrorAccount
from tiergate.usage_events import ValidEvent

CATALOG = load_catalog(Path(__file__).parent / "plans.yaml")  # pro: 1000 a month, rollover at most 250
AI = "ai_credits"
START = datetime(2026, 1, 15, tzinfo=UTC)


def at(days: float) -> datetime:
    return START + timedelta(days=days)


@pytest.fixture
async def mirror(mirror_backend: MirrorBackend) -> AsyncIterator[Mirror]:
    store = mirror_for(mirror_backend.location)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def subscribe(mirror: Mirror, tenant: str, start: datetime, end: datetime, tier: str = "pro") -> None:
    account = MirrorAccount(
        tenant,
        tier,
        "active",
        subscription_id=f"sub_{tenant}",
        current_period_start=start,
        current_period_end=end,
    )
    await mirror.transact(lambda txn: txn.put_account(account))


async def balance(mirror: Mirror, now: datetime, tenant: str = "t_1") -> object:
    return (await mirror.read(lambda sql: type_balance(sql, tenant, AI, now))).balance


async def spend(mirror: Mirror, amount: int, tx: str, now: datetime, tenant: str = "t_1") -> None:
    await mirror.transact(lambda txn: debit(txn, tenant, AI, tx, amount, now))


async def test_monthly_grants_inside_an_annual_plan_roll_over_at_most_the_cap(mirror: Mirror) -> None:
    await subscribe(mirror, "t_1", START, START.replace(year=2027))
    first = await sweep(mirror, CATALOG, [], at(1))
    assert (first.granted, await balance(mirror, at(1))) == (1, 1000)
    again = await sweep(mirror, CATALOG, [], at(2))  # once per cycle
    assert again.granted == 0 and await balance(mirror, at(2)) == 1000
    await spend(mirror, 300, "jan", at(3))
    # The boundary itself (Feb 15 00:00): the new month's grant and 250 of the 700 left.
    boundary = datetime(2026, 2, 15, tzinfo=UTC)
    assert await balance(mirror, boundary) == 0  # before the job: the old grant no longer counts
    done = await sweep(mirror, CATALOG, [], boundary)
    assert (done.granted, done.expired) == (
        2,
        0,
    )  # the plan grant and the rollover; the rest expired with them
    assert await balance(mirror, boundary) == 1250
    entries = await mirror.read(lambda sql: ledger_page(sql, "t_1", 0, 100))
    assert [(e["kind"], e["amount"]) for e in entries] == [
        ("grant", 1000),
        ("debit", -300),
        ("rollover", -250),
        ("grant", 250),
        ("expire", -450),
        ("grant", 1000),
    ]
    # March: nothing spent; the cap holds on the carried total (plan and earlier rollover alike).
    march = datetime(2026, 3, 15, tzinfo=UTC)
    await sweep(mirror, CATALOG, [], march)
    assert await balance(mirror, march) == 1250
    grants = await mirror.read(lambda sql: tenant_grants(sql, "t_1"))
    assert {g.id: g.remaining for g in grants} == await mirror.read(lambda sql: rebuilt_remaining(sql, "t_1"))


async def test_a_grant_every_period_expires_at_the_period_end_without_rollover(mirror: Mirror) -> None:
    catalog = parse_catalog(
        (Path(__file__).parent / "plans.yaml")
        .read_text()
        .replace("amount: 1000, every: month, rollover: {max: 250}", "amount: 40, every: period")
    )
    end = START + timedelta(days=31)
    await subscribe(mirror, "t_2", START, end)
    await sweep(mirror, catalog, [], at(0))
    await spend(mirror, 15, "a", at(5), tenant="t_2")
    assert await balance(mirror, at(5), "t_2") == 25
    # Stripe has not renewed the period yet: the replica's rule rolls it forward by its own length.
    done = await sweep(mirror, catalog, [], end)
    assert (done.granted, await balance(mirror, end, "t_2")) == (1, 40)
    entries = await mirror.read(lambda sql: ledger_page(sql, "t_2", 0, 100))
    assert [(e["kind"], e["amount"]) for e in entries][-2:] == [("expire", -25), ("grant", 40)]


async def test_a_default_tier_tenant_meets_its_grant_at_its_first_use(mirror: Mirror) -> None:
    catalog = parse_catalog(
        (Path(__file__).parent / "plans.yaml")
        .read_text()
        .replace(
            "      sso: false\n", "      sso: false\n    grants: [{credits: ai_credits, amount: 5}]\n", 1
        )
    )
    use = ValidEvent("t_new", "img-1", "images", at(1), 1)
    moved = await mirror.transact(lambda txn: debit_usage(txn, catalog, [use], [True], at(1)))
    assert [(m.before, m.after) for m in moved] == [(5, 3)]  # granted 5 first, then 2 for the image
    assert await balance(mirror, at(1), "t_new") == 3


async def test_a_decimal_cost_rounds_up_per_event(mirror: Mirror) -> None:
    catalog: Catalog = CATALOG
    await subscribe(mirror, "t_3", START, START.replace(year=2027))
    await sweep(mirror, catalog, [], at(1))
    uses = [ValidEvent("t_3", f"tok-{n}", "gpt4_tokens", at(1), Decimal("0.5")) for n in range(3)]
    await mirror.transact(lambda txn: debit_usage(txn, catalog, uses, [True, True, True], at(1)))
    assert await balance(mirror, at(1), "t_3") == Decimal("999.997")  # 0.5 x 0.002 = 0.001 each
