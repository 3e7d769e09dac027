"""Per-tenant overrides in the daemon's mirror: the current set, the audit trail, the change log.

Each function runs inside `Mirror.transact`: the override, its audit row and its change-log entry
commit together, so a follower sees an override exactly when its audit row exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from tiergate.catalog import FeatureValue, Quota
from tiergate.feed import value_document
from tiergate.periods import parse_rfc3339, rfc3339, utc_now_text
from tiergate.sync_daemon.mirror.schema import OVERRIDE_AUDIT, OVERRIDES
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql


@dataclass(frozen=True)
class Override:
    tenant: str
    feature: str
    value: bool | Quota
    expires_at: datetime | None
    reason: str
    actor: str | None = None
    updated_at: str | None = None

    def feed(self) -> dict[str, Any]:
        """The FeedOverride document followers receive."""
        return {
            "tenant": self.tenant,
            "feature": self.feature,
            "value": value_document(self.value),
            "expires_at": rfc3339(self.expires_at),
        }

    def in_force(self, now: datetime | None = None) -> bool:
        return self.expires_at is None or (now or datetime.now(UTC)) < self.expires_at

    def render(self, now: datetime) -> dict[str, Any]:
        """As the daemon's API answers it."""
        active = self.expires_at is None or now < self.expires_at
        return {
            **self.feed(),
            "reason": self.reason,
            "actor": self.actor,
            "updated_at": self.updated_at,
            "active": active,
        }


def set_override(txn: MirrorTxn, override: Override) -> Override:
    conn = txn.sql
    at = utc_now_text()
    value = json.dumps(value_document(override.value))
    expires = rfc3339(override.expires_at)
    row = {
        "tenant": override.tenant,
        "feature": override.feature,
        "value": value,
        "expires_at": expires,
        "reason": override.reason,
        "actor": override.actor,
        "updated_at": at,
    }
    txn.upsert(OVERRIDES, row, "tenant, feature")
    _audit(
        conn, override.tenant, override.feature, "set", value, expires, override.reason, override.actor, at
    )
    txn.append(override.tenant, "override", "upsert", override.feed())
    return Override(**{**override.__dict__, "updated_at": at})


def remove_override(txn: MirrorTxn, tenant: str, feature: str, reason: str, actor: str | None) -> bool:
    """Remove it (audited); False when the tenant had no override for `feature`."""
    conn = txn.sql
    cursor = conn.execute(f"DELETE FROM {OVERRIDES} WHERE tenant = ? AND feature = ?", (tenant, feature))
    if cursor.rowcount == 0:
        return False
    at = utc_now_text()
    _audit(conn, tenant, feature, "remove", None, None, reason, actor, at)
    # A delete names its feature in the body's place: the feed entry gets `feature` from it.
    txn.append(tenant, "override", "delete", {"feature": feature})
    return True


def tenant_overrides(conn: Sql, tenant: str) -> list[Override]:
    rows = conn.execute(
        f"SELECT tenant, feature, value, expires_at, reason, actor, updated_at FROM {OVERRIDES} "
        "WHERE tenant = ? ORDER BY feature",
        (tenant,),
    ).fetchall()
    return [_override(row) for row in rows]


def tenant_audit(conn: Sql, tenant: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` audit entries of the tenant, newest first."""
    rows = conn.execute(
        f"SELECT id, feature, action, value, expires_at, reason, actor, at FROM {OVERRIDE_AUDIT} "
        "WHERE tenant = ? ORDER BY id DESC LIMIT ?",
        (tenant, limit),
    ).fetchall()
    names = ("id", "feature", "action", "value", "expires_at", "reason", "actor", "at")
    entries = [dict(zip(names, row, strict=True)) for row in rows]
    for entry in entries:
        entry["value"] = json.loads(entry["value"]) if entry["value"] is not None else None
    return entries


_VALUE: TypeAdapter[bool | Quota] = TypeAdapter(FeatureValue)


def _override(row: tuple[Any, ...]) -> Override:
    tenant, feature, value, expires_at, reason, actor, updated_at = row
    parsed: bool | Quota = _VALUE.validate_python(json.loads(value))
    return Override(tenant, feature, parsed, parse_rfc3339(expires_at), reason, actor, updated_at)


def _audit(conn: Sql, *values: Any) -> None:
    conn.execute(
        f"INSERT INTO {OVERRIDE_AUDIT} (tenant, feature, action, value, expires_at, reason, actor, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        list(values),
    )
