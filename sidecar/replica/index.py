"""The replica in memory: what the decision path reads instead of SQLite.

Accounts by tenant, each tenant's usage counters and feature overrides, loaded from the replica file in one read
transaction at start (and again after an import or a snapshot), and reloaded tenant by tenant
for every feed batch the follower commits, on the event loop, before its position is adopted.
So a decision reads dicts, never SQLite, and the counters it reads always belong to the
position the reader reports (what the usage ledger's read-your-writes needs). The file stays the
durable copy.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tiergate.amounts import Amount, from_stored
from tiergate.usage_events import GAUGE_PERIOD_START

if TYPE_CHECKING:  # the reader (replica/store.py) builds the rows and owns the SQL
    from sidecar.replica.store import AccountRow

# A tenant's counters, flat: (period_start, code, value, period_start, code, value, ...); one
# tuple per tenant costs ~130 bytes less than a tuple of triples (see docs/performance.md).
Counters = tuple[str | Amount, ...]
# (tenant, period_start, code, value): an int, or a decimal's text as the replica stores it
UsageRow = tuple[str, str, str, int | str]
Overrides = dict[str, dict[str, Any]]  # feature -> {"value", "expires_at"}, as the policy reads them


class ReplicaIndex:
    """Owned by the event-loop thread; lookups are dict operations."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountRow] = {}
        self._usage: dict[str, Counters] = {}
        self._overrides: dict[str, Overrides] = {}

    def account(self, tenant: str) -> AccountRow | None:
        return self.accounts.get(tenant)

    def usage(self, tenant: str, period_start: str) -> dict[str, Amount]:
        counters = self._usage.get(tenant)
        if not counters:
            return {}
        found: dict[str, Amount] = {}
        for i in range(0, len(counters), 3):
            if counters[i] == period_start or counters[i] == GAUGE_PERIOD_START:  # gauges: every period
                value = counters[i + 2]
                assert not isinstance(value, str)  # _group made it an Amount
                found[str(counters[i + 1])] = value
        return found

    def overrides(self, tenant: str) -> Overrides:
        return self._overrides.get(tenant) or {}

    def __len__(self) -> int:
        return len(self.accounts)

    def replace_all(
        self, accounts: Iterable[AccountRow], usage: Iterable[UsageRow], overrides: dict[str, Overrides]
    ) -> None:
        self.accounts = {row.tenant: row for row in accounts}
        self._usage = _group(usage)
        self._overrides = overrides

    def replace_tenants(
        self,
        tenants: Iterable[str],
        accounts: Iterable[AccountRow],
        usage: Iterable[UsageRow],
        overrides: dict[str, Overrides],
    ) -> None:
        """`tenants`' rows are now `accounts`, `usage` and `overrides` (absent: gone)."""
        for tenant in tenants:
            self.accounts.pop(tenant, None)
            self._usage.pop(tenant, None)
            self._overrides.pop(tenant, None)
        for row in accounts:
            self.accounts[row.tenant] = row
        self._usage.update(_group(usage))
        self._overrides.update(overrides)


def _group(rows: Iterable[UsageRow]) -> dict[str, Counters]:
    grouped: dict[str, list[str | Amount]] = {}
    for tenant, period_start, code, value in rows:
        amount = value if type(value) is int else from_stored(value)  # a decimal counter: exact
        grouped.setdefault(tenant, []).extend((sys.intern(period_start), sys.intern(code), amount))
    return {tenant: tuple(counters) for tenant, counters in grouped.items()}
