"""The replica in memory: what the decision path reads instead of SQLite.

Accounts by tenant and each tenant's usage counters, loaded from the replica file in one read
transaction at start (and again after an import or a snapshot), and reloaded tenant by tenant
for every feed batch the follower commits, on the event loop, before its position is adopted.
So a decision reads dicts, never SQLite, and the counters it reads always belong to the
position the reader reports (what the usage ledger's read-your-writes needs). The file stays the
durable copy.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the reader (replica/store.py) builds the rows and owns the SQL
    from sidecar.replica.store import AccountRow

# One counter of a tenant: (period_start, code, value); a tenant holds a handful.
Counter = tuple[str, str, int]
UsageRow = tuple[str, str, str, int]  # (tenant, period_start, code, value)


class ReplicaIndex:
    """Owned by the event-loop thread; lookups are dict operations."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountRow] = {}
        self._usage: dict[str, tuple[Counter, ...]] = {}

    def account(self, tenant: str) -> AccountRow | None:
        return self.accounts.get(tenant)

    def usage(self, tenant: str, period_start: str) -> dict[str, int]:
        counters = self._usage.get(tenant)
        if not counters:
            return {}
        return {code: value for start, code, value in counters if start == period_start}

    def __len__(self) -> int:
        return len(self.accounts)

    def replace_all(self, accounts: Iterable[AccountRow], usage: Iterable[UsageRow]) -> None:
        self.accounts = {row.tenant: row for row in accounts}
        self._usage = _group(usage)

    def replace_tenants(
        self, tenants: Iterable[str], accounts: Iterable[AccountRow], usage: Iterable[UsageRow]
    ) -> None:
        """`tenants`' rows are now `accounts` and `usage` (a tenant absent from both is gone)."""
        for tenant in tenants:
            self.accounts.pop(tenant, None)
            self._usage.pop(tenant, None)
        for row in accounts:
            self.accounts[row.tenant] = row
        self._usage.update(_group(usage))


def _group(rows: Iterable[UsageRow]) -> dict[str, tuple[Counter, ...]]:
    grouped: dict[str, list[Counter]] = {}
    for tenant, period_start, code, value in rows:
        grouped.setdefault(tenant, []).append((sys.intern(period_start), sys.intern(code), value))
    return {tenant: tuple(counters) for tenant, counters in grouped.items()}
