"""Materialised decisions: answers per tenant, kept until they can change, dropped when they do.

A hit costs two dict lookups. Correctness rests on invalidation, not on the key: the follower's
feed batches drop their tenants (through the replica reader), usage recorded or settled here drops
its tenant, a snapshot, an import or a policy reload clears everything, and tenants whose usage is
in a delivery awaiting its answer are not cached at all. The only other way an answer changes is
time: it lives until the decision's `valid_until` (the policy's own "this may change by time
alone" instant: period end, trial end, grace end, the fail-closed replica age), and no longer than
`ttl_s` when one is set (0: no extra bound). The entry count bounds the memory: ~350 bytes an
entry (measured with tracemalloc), so the default 100,000 entries hold ~35 MB.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

from tiergate.models import PolicyAnswer


class _Entry(NamedTuple):
    expires: float
    stale: bool
    answer: PolicyAnswer


class DecisionCache:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._tenants: OrderedDict[str, dict[tuple[str, int], _Entry]] = OrderedDict()
        self._size = 0
        # Bumped by every invalidation: an answer computed across one (an await in the engine)
        # is not stored, since it may predate the change.
        self.epoch = 0

    def get(self, tenant: str, feature: str, quantity: int, now: float, stale: bool) -> PolicyAnswer | None:
        entries = self._tenants.get(tenant)
        if entries is None:
            return None
        entry = entries.get((feature, quantity))
        if entry is None or entry.stale is not stale:
            return None
        if entry.expires <= now:
            del entries[(feature, quantity)]
            self._size -= 1
            return None
        return entry.answer

    def put(
        self,
        tenant: str,
        feature: str,
        quantity: int,
        answer: PolicyAnswer,
        *,
        now: float,
        valid_until: float | None,
        stale: bool,
        epoch: int,
    ) -> None:
        if self.max_entries == 0 or epoch != self.epoch:
            return
        expires = now + self.ttl_s if self.ttl_s > 0 else math.inf
        if valid_until is not None and valid_until < expires:
            expires = valid_until
        if expires <= now:
            return
        entries = self._tenants.get(tenant)
        if entries is None:
            entries = self._tenants[tenant] = {}
        else:
            self._tenants.move_to_end(tenant)
        if (feature, quantity) not in entries:
            self._size += 1
        entries[(feature, quantity)] = _Entry(expires, stale, answer)
        while self._size > self.max_entries:
            _, evicted = self._tenants.popitem(last=False)  # the least recently written tenant
            self._size -= len(evicted)

    def invalidate(self, tenant: str) -> list[tuple[str, int]]:
        """Drop `tenant`'s answers; returns their (feature, quantity) keys."""
        self.epoch += 1
        entries = self._tenants.pop(tenant, None)
        if entries is None:
            return []
        self._size -= len(entries)
        return list(entries)

    def holds(self, tenant: str, feature: str, quantity: int) -> bool:
        entries = self._tenants.get(tenant)
        return entries is not None and (feature, quantity) in entries

    def clear(self) -> None:
        self.epoch += 1
        self._tenants.clear()
        self._size = 0

    def __len__(self) -> int:
        return self._size
