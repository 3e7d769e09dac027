"""Support's reads of one tenant in the mirror: search, account versions, counters, outbound webhooks.

Plain functions of a read connection (`Mirror.read`), the same SQL on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tiergate.amounts import Amount, from_stored
from tiergate.sync_daemon.mirror.overrides import Override, tenant_audit, tenant_overrides
from tiergate.sync_daemon.mirror.schema import (
    ACCOUNT_VERSIONS,
    ACCOUNTS,
    CUSTOMERS,
    OUTBOUND_DELIVERIES,
    OUTBOUND_EVENTS,
    USAGE,
)
from tiergate.sync_daemon.mirror.store import MirrorAccount, Sql, column_names

VERSIONS_SHOWN = 20
WEBHOOKS_SHOWN = 20
AUDIT_SHOWN = 20


@dataclass(frozen=True)
class TenantRecord:
    """Everything the mirror holds about one tenant, read in one go."""

    tenant: str
    account: MirrorAccount | None
    customers: list[str]
    emails: dict[str, str]  # customer id -> email, for the live customers whose email is known
    counters: dict[str, dict[str, Amount]]  # period_start -> code -> value
    overrides: list[Override]
    override_audit: list[dict[str, Any]]
    versions: list[dict[str, Any]]
    webhooks: list[dict[str, Any]]

    @property
    def known(self) -> bool:
        return bool(self.account or self.customers or self.counters or self.overrides or self.versions)


def read_tenant(sql: Sql, tenant: str) -> TenantRecord:
    customers = sql.execute(
        f"SELECT customer_id, email, deleted_at FROM {CUSTOMERS} WHERE tenant = ? ORDER BY customer_id",
        [tenant],
    ).fetchall()
    return TenantRecord(
        tenant=tenant,
        account=read_account(sql, tenant),
        customers=[str(customer) for customer, _, _ in customers],
        emails={str(c): str(email) for c, email, deleted_at in customers if email and deleted_at is None},
        counters=read_counters(sql, tenant),
        overrides=tenant_overrides(sql, tenant),
        override_audit=tenant_audit(sql, tenant, AUDIT_SHOWN),
        versions=account_versions(sql, tenant, VERSIONS_SHOWN),
        webhooks=outbound_webhooks(sql, tenant, WEBHOOKS_SHOWN),
    )


def read_account(sql: Sql, tenant: str) -> MirrorAccount | None:
    cursor = sql.execute(f"SELECT * FROM {ACCOUNTS} WHERE tenant = ?", [tenant])
    found = cursor.fetchone()
    return MirrorAccount.from_row(dict(zip(column_names(cursor), found, strict=True))) if found else None


def read_counters(sql: Sql, tenant: str) -> dict[str, dict[str, Amount]]:
    rows = sql.execute(f"SELECT period_start, code, value FROM {USAGE} WHERE tenant = ?", [tenant]).fetchall()
    counters: dict[str, dict[str, Amount]] = {}
    for period_start, code, value in rows:
        counters.setdefault(str(period_start), {})[str(code)] = from_stored(value)
    return counters


def account_versions(sql: Sql, tenant: str, limit: int) -> list[dict[str, Any]]:
    """The tenant's newest `limit` account versions, newest first, each with its cause."""
    cursor = sql.execute(
        f"SELECT id, version, body, cause, event_id, event_type, event_at, actor, at FROM {ACCOUNT_VERSIONS} "
        "WHERE tenant = ? ORDER BY id DESC LIMIT ?",
        [tenant, limit],
    )
    names = column_names(cursor)
    versions = []
    for row in cursor.fetchall():
        version = dict(zip(names, row, strict=True))
        version["account"] = json.loads(version.pop("body")) if version["body"] else None
        versions.append(version)
    return versions


def version_at(sql: Sql, tenant: str, version: int) -> dict[str, Any] | None:
    """The newest stored row of the tenant's account `version` (lineage of a decision)."""
    cursor = sql.execute(
        f"SELECT id, version, body, cause, event_id, event_type, event_at, actor, at FROM {ACCOUNT_VERSIONS} "
        "WHERE tenant = ? AND version = ? ORDER BY id DESC LIMIT 1",
        [tenant, version],
    )
    names = column_names(cursor)
    found = cursor.fetchone()
    if found is None:
        return None
    row = dict(zip(names, found, strict=True))
    row["account"] = json.loads(row.pop("body")) if row["body"] else None
    return row


def outbound_webhooks(sql: Sql, tenant: str, limit: int) -> list[dict[str, Any]]:
    """The newest outbound events about the tenant and how their deliveries went."""
    events = sql.execute(
        f"SELECT id, type, created_at FROM {OUTBOUND_EVENTS} WHERE tenant = ? ORDER BY created_at DESC, id LIMIT ?",
        [tenant, limit],
    ).fetchall()
    found = []
    for event_id, event_type, created_at in events:
        deliveries = sql.execute(
            f"SELECT endpoint, status, attempts, last_status, last_error, delivered_at FROM {OUTBOUND_DELIVERIES} "
            "WHERE event_id = ? ORDER BY endpoint",
            [event_id],
        )
        names = column_names(deliveries)
        found.append(
            {
                "id": event_id,
                "type": event_type,
                "created_at": created_at,
                "deliveries": [dict(zip(names, row, strict=True)) for row in deliveries.fetchall()],
            }
        )
    return found


SEARCH_COLUMNS = ("tenant", "tier", "status", "stripe_customer_id", "subscription_id")
EMAILS_SHOWN = 5  # per tenant found: a tenant has one customer, rarely a few


def search_tenants(sql: Sql, query: str, limit: int) -> list[dict[str, Any]]:
    """Tenants whose id, Stripe customer id, subscription id or customer email starts with `query`
    (any case; an exact match is a prefix too), each with its customers' emails."""
    prefix = _like_prefix(query.lower())
    rows = sql.execute(
        f"SELECT t.tenant, a.tier, a.status, a.stripe_customer_id, a.subscription_id FROM ("
        f"SELECT tenant FROM {ACCOUNTS} WHERE lower(tenant) LIKE ? ESCAPE '!' "
        "OR lower(stripe_customer_id) LIKE ? ESCAPE '!' OR lower(subscription_id) LIKE ? ESCAPE '!' "
        f"UNION SELECT tenant FROM {CUSTOMERS} WHERE lower(tenant) LIKE ? ESCAPE '!' "
        "OR lower(customer_id) LIKE ? ESCAPE '!' "
        "OR (deleted_at IS NULL AND lower(email) LIKE ? ESCAPE '!')"
        f") t LEFT JOIN {ACCOUNTS} a ON a.tenant = t.tenant ORDER BY t.tenant LIMIT ?",
        [*[prefix] * 6, limit],
    ).fetchall()
    found = [dict(zip(SEARCH_COLUMNS, row, strict=True)) for row in rows]
    if not any(row["tenant"] == query for row in found) and _has_traces(sql, query):
        found.insert(0, dict.fromkeys(SEARCH_COLUMNS) | {"tenant": query})
    found = found[:limit]
    emails = _emails_of(sql, [row["tenant"] for row in found])
    return [{**row, "emails": emails.get(row["tenant"], [])} for row in found]


def _emails_of(sql: Sql, tenants: list[str]) -> dict[str, list[str]]:
    """The live customers' known emails of each of `tenants` (at most EMAILS_SHOWN each)."""
    if not tenants:
        return {}
    marks = ", ".join("?" for _ in tenants)
    rows = sql.execute(
        f"SELECT tenant, email FROM {CUSTOMERS} WHERE tenant IN ({marks}) AND deleted_at IS NULL "
        "AND email IS NOT NULL ORDER BY tenant, customer_id",
        tenants,
    ).fetchall()
    emails: dict[str, list[str]] = {}
    for tenant, email in rows:
        shown = emails.setdefault(str(tenant), [])
        if len(shown) < EMAILS_SHOWN and email not in shown:
            shown.append(str(email))
    return emails


def _has_traces(sql: Sql, tenant: str) -> bool:
    """A tenant without an account (on the default tier) that the mirror still knows of."""
    found = sql.execute(
        f"SELECT 1 FROM {USAGE} WHERE tenant = ? UNION ALL SELECT 1 FROM {ACCOUNT_VERSIONS} WHERE tenant = ? LIMIT 1",
        [tenant, tenant],
    ).fetchone()
    return found is not None


def _like_prefix(query: str) -> str:
    """`query%` with LIKE's wildcards in `query` taken literally (escape character `!`)."""
    escaped = query.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"{escaped}%"
