"""Credits a tier grants each cycle, and the rollover from one cycle into the next.

`grant_cycle` runs under the tenant's locks inside `Mirror.transact`, from the credits job, before
an expiry of a plan grant (so a cycle's leftover is carried before it could expire) and before a
usage debit (a tenant on the default tier is known from its first use). Each cycle's grant is
made once: its `source_ref` names the tier, the schedule and the cycle's start. At a new cycle,
the plan grants that ended by its start give up to `rollover.max` of what they had left to a
`rollover` grant lasting the new cycle; the rest expires. A cycle the daemon never saw (it was
down for all of it) is not granted afterwards (docs/adr/0042-credits-ledger.md).
"""

from __future__ import annotations

from datetime import datetime

from tiergate.amounts import Amount, total
from tiergate.catalog import Catalog, PlanGrant
from tiergate.credits import subtract
from tiergate.models import ENDED_STATUSES, Account
from tiergate.periods import rfc3339, usage_period
from tiergate.sync_daemon.credits.cycles import cycle
from tiergate.sync_daemon.credits.ledger import (
    Grant,
    NewGrant,
    Source,
    active_grants,
    add_grant,
    expire_grant,
    grant_by_ref,
    take_for_rollover,
)
from tiergate.sync_daemon.mirror.store import MirrorTxn


def grant_cycle(txn: MirrorTxn, catalog: Catalog, tenant: str, now: datetime) -> list[Grant]:
    """Make the current cycle's grants of the tenant's tier (with their rollovers); the new ones."""
    mirrored = txn.account(tenant)
    account = _account(mirrored.feed()) if mirrored is not None else None
    live = account is not None and account.status not in ENDED_STATUSES and account.tier in catalog.tiers
    tier = account.tier if live and account is not None else catalog.default_tier
    period = usage_period(account if live else None, now)
    made: list[Grant] = []
    for index, schedule in enumerate(catalog.tiers[tier].grants):
        made += _one_schedule(
            txn, tenant, f"{tier}:{index}", schedule, cycle(schedule.every, period, now), now
        )
    return made


def _one_schedule(
    txn: MirrorTxn,
    tenant: str,
    name: str,
    schedule: PlanGrant,
    current: tuple[datetime, datetime],
    now: datetime,
) -> list[Grant]:
    begins, ends = current
    ref = f"{name}:{rfc3339(begins)}"
    txn.lock("credits", tenant)
    if grant_by_ref(txn.sql, tenant, "plan", ref) is not None:
        return []
    ended = [
        g
        for g in active_grants(txn.sql, tenant, schedule.credits)
        if g.source in ("plan", "rollover") and g.expires_at is not None and g.expires_at <= begins
    ]
    made: list[Grant] = []
    ended, carried = _carry(txn, ended, schedule, now)
    if carried > 0:
        rolled, _ = add_grant(txn, _new(tenant, schedule, carried, "rollover", ref, begins, ends), now)
        made.append(rolled)
    for old in ended:
        expire_grant(txn, old, now)
    granted, created = add_grant(txn, _new(tenant, schedule, schedule.amount, "plan", ref, begins, ends), now)
    return [*made, granted] if created else made


def _carry(
    txn: MirrorTxn, ended: list[Grant], schedule: PlanGrant, now: datetime
) -> tuple[list[Grant], Amount]:
    """Take up to `rollover.max` of the ended grants' leftovers, oldest first: (the ended grants
    with what is left of them to expire, the amount carried)."""
    if schedule.rollover is None:
        return ended, 0
    room: Amount = schedule.rollover.max
    carried: list[Amount] = []
    after: list[Grant] = []
    for old in sorted(ended, key=lambda g: g.created):
        part = min(old.remaining, room)
        if part > 0:
            old = take_for_rollover(txn, old, part, now)
            room = subtract(room, part)
            carried.append(part)
        after.append(old)
    return after, total(carried)


def _new(
    tenant: str,
    schedule: PlanGrant,
    amount: Amount,
    source: Source,
    ref: str,
    begins: datetime,
    ends: datetime,
) -> NewGrant:
    return NewGrant(
        tenant,
        schedule.credits,
        amount,
        schedule.category,
        source,
        ref,
        schedule.priority,
        begins,
        ends,
        None,
        f"{source} for the cycle from {rfc3339(begins)}",
    )


def _account(feed: dict[str, object]) -> Account:
    return Account.model_validate(feed)
