"""The credits job (the leader, every CREDITS_SWEEP_S): plan grants of new cycles, then expiries.

Each tenant's work is its own transaction: a failure of one is logged and retried on the next
run, never blocks the others. Outbound events commit with the change they describe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from tiergate.catalog import Catalog
from tiergate.models import ENDED_STATUSES
from tiergate.periods import rfc3339
from tiergate.sync_daemon.credits.events import expired_event, granted_event, send
from tiergate.sync_daemon.credits.ledger import expire_due
from tiergate.sync_daemon.credits.plan_grants import grant_cycle
from tiergate.sync_daemon.credits.purchases import reconcile_purchase
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
    reconciled: int = 0  # pack purchases granted from listing Checkout Sessions (webhooks lost)
    failed_charges: int = 0  # automatic top-ups declined (credits.top_up_failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "expired": self.expired,
            "failed": len(self.failed),
            "top_ups_charged": self.charged,
            "top_ups_failed": self.failed_charges,
            "purchases_reconciled": self.reconciled,
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
    reconciler: PurchaseReconciler | None = None,
) -> SweepResult:
    """One run of the job: the due cycles tenant by tenant, the expiries in batches, then, with a
    charger (the Stripe billing actions), the automatic top-ups the moves started and the
    reconciliation of pack purchases."""
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
        if reconciler is not None:
            result.reconciled = await reconciler.run(mirror, catalog, stripe, endpoints, metadata_key, moment)
    if any(result.as_dict().values()):
        log.info("credits_swept", **result.as_dict())
    return result


PURCHASES_LOOKBACK = timedelta(days=3)  # Stripe retries a webhook for three days


@dataclass
class PurchaseReconciler:
    """Lists the paid pack sessions of the last three days, at most every `every`, and grants those
    no webhook granted; each grants once whichever comes first, this or its webhook."""

    every: timedelta = timedelta(minutes=15)
    last: datetime | None = None

    async def run(
        self,
        mirror: Mirror,
        catalog: Catalog,
        stripe: TopUpCharger,
        endpoints: list[str],
        metadata_key: str,
        now: datetime,
    ) -> int:
        if self.last is not None and self.last <= now < self.last + self.every:
            return 0
        try:
            sessions = await stripe.completed_sessions(int((now - PURCHASES_LOOKBACK).timestamp()))
        except Exception:  # Stripe unreachable: the next pass lists again
            log.exception("credits_purchase_reconcile_failed")
            return 0
        self.last = now
        granted = 0
        for session in sessions:
            outcome = await mirror.transact(
                functools.partial(
                    reconcile_purchase,
                    catalog=catalog,
                    session=session,
                    metadata_key=metadata_key,
                    now=now,
                    endpoints=endpoints,
                )
            )
            granted += outcome == "granted"
        return granted
