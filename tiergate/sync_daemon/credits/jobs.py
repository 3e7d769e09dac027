"""The credits job (the leader, every CREDITS_SWEEP_S): plan grants of new cycles, then expiries.

Each tenant's work is its own transaction: a failure of one is logged and retried on the next
run, never blocks the others. Outbound events commit with the change they describe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from tiergate.catalog import Catalog
from tiergate.models import ENDED_STATUSES
from tiergate.periods import rfc3339
from tiergate.sync_daemon.credits.events import expired_event, granted_event, send
from tiergate.sync_daemon.credits.ledger import expire_due
from tiergate.sync_daemon.credits.plan_grants import grant_cycle
from tiergate.sync_daemon.credits.top_ups import TopUpCharger, after_moves, charge_due
from tiergate.sync_daemon.mirror.schema import ACCOUNTS, CREDIT_GRANTS
from tiergate.sync_daemon.mirror.store import Mirror, MirrorTxn, Sql

log = structlog.get_logger("tiergate.credits")

CREDITS_SWEEP_S = 60.0
EXPIRE_BATCH = 500


@dataclass
class SweepResult:
    granted: int = 0
    expired: int = 0
    failed: list[str] = field(default_factory=list)
    charged: int = 0  # automatic top-ups charged and granted
    failed_charges: int = 0  # automatic top-ups declined (credits.top_up_failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "expired": self.expired,
            "failed": len(self.failed),
            "top_ups_charged": self.charged,
            "top_ups_failed": self.failed_charges,
        }


def cycle_due(sql: Sql, catalog: Catalog, now: datetime) -> list[str]:
    """Tenants whose live tier grants credits and who hold no plan grant of that tier lasting past now."""
    tiers = [name for name, tier in catalog.tiers.items() if tier.grants]
    if not tiers:
        return []
    ended = ", ".join(f"'{s}'" for s in sorted(ENDED_STATUSES))
    rows = sql.execute(
        f"SELECT a.tenant, a.tier, a.status FROM {ACCOUNTS} a WHERE a.tier IN ({', '.join('?' for _ in tiers)}) "
        f"AND a.status NOT IN ({ended}) AND NOT EXISTS (SELECT 1 FROM {CREDIT_GRANTS} g WHERE g.tenant = a.tenant "
        "AND g.source = 'plan' AND g.state = 'active' AND g.source_ref LIKE a.tier || ':%' AND g.expires_at > ?) "
        "ORDER BY a.tenant",
        [*tiers, rfc3339(now)],
    ).fetchall()
    due = [str(row[0]) for row in rows]
    if catalog.tiers[
        catalog.default_tier
    ].grants:  # tenants without a live subscription, known by their grants
        rows = sql.execute(
            f"SELECT DISTINCT tenant FROM {CREDIT_GRANTS} WHERE source = 'plan' AND state = 'active' "
            "AND source_ref LIKE ? AND expires_at <= ? ORDER BY tenant",
            [f"{catalog.default_tier}:%", rfc3339(now)],
        ).fetchall()
        due += [str(row[0]) for row in rows if str(row[0]) not in due]
    return due


def cycle_for(txn: MirrorTxn, catalog: Catalog, endpoints: list[str], tenant: str, now: datetime) -> int:
    made = grant_cycle(txn, catalog, tenant, now)
    send(txn, endpoints, [granted_event(g) for g in made])
    return len(made)


def expire_now(txn: MirrorTxn, catalog: Catalog, endpoints: list[str], now: datetime) -> int:
    """Expire what is due; a plan grant's tenant gets its new cycle first (the rollover is taken
    from the leftover before it expires)."""
    due = txn.sql.execute(
        f"SELECT DISTINCT tenant FROM {CREDIT_GRANTS} WHERE state = 'active' AND expires_at <= ? "
        "AND source IN ('plan', 'rollover') ORDER BY tenant LIMIT ?",
        [rfc3339(now), EXPIRE_BATCH],
    ).fetchall()
    for row in due:
        cycle_for(txn, catalog, endpoints, str(row[0]), now)
    expired = expire_due(txn, now, EXPIRE_BATCH)
    send(txn, endpoints, [expired_event(g, g.remaining, m) for g, m in expired if g.remaining])
    after_moves(txn, catalog, endpoints, [m for _, m in expired], now)
    return len(expired)


async def sweep(
    mirror: Mirror,
    catalog: Catalog,
    endpoints: list[str],
    now: datetime | None = None,
    *,
    charger: Callable[[], TopUpCharger | None] = lambda: None,
    metadata_key: str = "tenant_id",
) -> SweepResult:
    """One run of the job: the due cycles tenant by tenant, the expiries in batches, then the
    automatic top-ups the moves started (with a charger: the Stripe billing actions)."""
    moment = now or datetime.now(UTC)
    result = SweepResult()
    if not catalog.credits:
        return result
    for tenant in await mirror.read(lambda sql: cycle_due(sql, catalog, moment)):
        try:
            result.granted += await mirror.transact(
                functools.partial(cycle_for, catalog=catalog, endpoints=endpoints, tenant=tenant, now=moment)
            )
        except Exception:  # one tenant's failure must not stop the others
            log.exception("credits_cycle_failed", tenant=tenant)
            result.failed.append(tenant)
    while True:
        expired = await mirror.transact(lambda txn: expire_now(txn, catalog, endpoints, moment))
        result.expired += expired
        if expired < EXPIRE_BATCH:
            break
    stripe = charger()
    if stripe is not None and catalog.packs:
        charged = await charge_due(mirror, catalog, stripe, endpoints, metadata_key, moment)
        result.charged, result.failed_charges = charged["charged"], charged["failed"]
    if result.granted or result.expired or result.failed or result.charged or result.failed_charges:
        log.info("credits_swept", **result.as_dict())
    return result
