"""Materialised decisions: answers per tenant, kept until they can change, dropped when they do.

A hit costs two dict lookups and hands back the answer already rendered as JSON, so a GET
/v1/check answers by joining bytes. Correctness rests on invalidation, not on the key: the
follower's feed batches drop their tenants (through the replica reader), usage recorded or settled
here drops its tenant, a snapshot, an import or a policy reload clears everything, and tenants
whose usage is in a delivery awaiting its answer are not cached at all. The only other way an
answer changes is time: it lives until the decision's `valid_until` (the policy's own "this may
change by time alone" instant: period end, trial end, grace end, the fail-closed replica age), and
no longer than `ttl_s` when one is set (0: no extra bound).

Memory is bounded by a budget in bytes (`TIERGATE_DECISION_CACHE_MB`), not by an entry count:
an entry is one bytes object (its expiry, outcome and the answer's JSON, ~170 bytes with its
overhead) under its feature in the tenant's dict (~250 bytes a tenant), each charged its size plus
the measured overhead (tests/unit/test_decision_cache.py holds the estimate to tracemalloc's
count). When a put goes over the budget, the least recently written tenants go first: 64 MiB hold
~290,000 answers (72,000 tenants asking about 4 features each; 500,000 answers need ~110 MB).
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from typing import NamedTuple

import orjson

from tiergate.models import REASONS, PolicyAnswer

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
# What Python spends around an entry's bytes object, measured with tracemalloc (64-bit CPython
# 3.11; tests/unit/test_decision_cache.py checks it): the object's header and its share of the
# tenant's dict (a tenant's first 5 entries fit the dict's first table); around a tenant: its dict,
# its node in the recency order and its slot in it; a (feature, quantity) key's tuple and int.
ENTRY_OVERHEAD_BYTES = 40
TENANT_OVERHEAD_BYTES = 250
KEY_TUPLE_BYTES = 72
# expiry (epoch seconds), flags (bit 0: stale, bit 1: allow, bit 2: bounded), the reason's index
# in `_reasons`; a bounded entry then holds its bound, its limit and its period's start.
_HEADER = struct.Struct("<dBB")
# used_floor, used_bound (USED_CEILING: none), limit (_NO_LIMIT: null), the period start's length
_BOUND = struct.Struct("<qqqB")
_STALE, _ALLOW, _BOUNDED = 1, 2, 4
_NO_LIMIT = -(2**63)
_FLAGS_AT = 8
_USED, _REMAINING = b',"used":', b',"remaining":'  # in an answer's JSON, in this order
_MAX_REASONS = 256  # one byte; a policy inventing more reasons than that is not cached past them

Key = str | tuple[str, int]  # the feature alone for quantity 1 (the usual case: no tuple to keep)


class UsedBound(NamedTuple):
    """The policy's `used_floor` and `used_bound`: the answer holds while the feature's counter
    for the period starting at `period_start` stays within `used_min`..`used_max`; `used` and
    `remaining` (from `limit`) are then rendered from the live counter."""

    used_min: int
    used_max: int
    limit: int | None
    period_start: str


class Materialised(NamedTuple):
    """An answer as the cache keeps it: its outcome, and its JSON object without the closing
    brace (`{"allow":true,...,"valid_until":null`), ready for the lineage to be appended."""

    allow: bool
    reason: str
    head: bytes
    bound: UsedBound | None = None

    @classmethod
    def of(cls, answer: PolicyAnswer, bound: UsedBound | None = None) -> Materialised:
        return cls(answer.allow, answer.reason, orjson.dumps(answer)[:-1], bound)

    def answer(self) -> PolicyAnswer:
        return PolicyAnswer(**orjson.loads(self.head + b"}"))

    def with_used(self, used: int) -> Materialised:
        """The same answer with `used` and `remaining` for the counter's value now."""
        assert self.bound is not None
        limit = self.bound.limit
        start = self.head.index(_USED) + len(_USED)
        end = self.head.index(_REMAINING, start)
        end = self.head.index(b",", end + len(_REMAINING))
        remaining = b"null" if limit is None else str(max(limit - used, 0)).encode()
        head = b"%s%d%s%s%s" % (self.head[:start], used, _REMAINING, remaining, self.head[end:])
        return self._replace(head=head)


def entry_key(feature: str, quantity: int) -> Key:
    return feature if quantity == 1 else (feature, quantity)


class DecisionCache:
    """`max_entries` (None: no count bound; 0 disables caching) and `max_bytes` bound it together."""

    def __init__(
        self, max_entries: int | None, ttl_s: float, *, max_bytes: int = DEFAULT_BUDGET_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._tenants: OrderedDict[str, dict[Key, bytes]] = OrderedDict()
        self._size = 0
        self.bytes = 0  # the estimate of what the entries hold, against max_bytes
        self._reasons: list[str] = list(REASONS)
        self._reason_index = {reason: i for i, reason in enumerate(self._reasons)}
        # Bumped by every invalidation: an answer computed across one (an await in the engine)
        # is not stored, since it may predate the change.
        self.epoch = 0

    def get(self, tenant: str, feature: str, quantity: int, now: float, stale: bool) -> Materialised | None:
        entries = self._tenants.get(tenant)
        if entries is None:
            return None
        key = feature if quantity == 1 else (feature, quantity)
        packed = entries.get(key)
        if packed is None:
            return None
        expires, flags, reason = _HEADER.unpack_from(packed)
        if bool(flags & _STALE) is not stale:
            return None
        if expires <= now:
            self._drop(entries, key, packed)
            return None
        if not flags & _BOUNDED:
            return Materialised(bool(flags & _ALLOW), self._reasons[reason], packed[_HEADER.size :])
        used_min, used_max, limit, length = _BOUND.unpack_from(packed, _HEADER.size)
        at = _HEADER.size + _BOUND.size
        start = packed[at : at + length].decode()
        bound = UsedBound(used_min, used_max, None if limit == _NO_LIMIT else limit, start)
        return Materialised(bool(flags & _ALLOW), self._reasons[reason], packed[at + length :], bound)

    def drop(self, tenant: str, feature: str, quantity: int) -> None:
        """Forget one answer (its bound was crossed)."""
        entries = self._tenants.get(tenant)
        key = entry_key(feature, quantity)
        packed = entries.get(key) if entries is not None else None
        if entries is not None and packed is not None:
            self._drop(entries, key, packed)

    def put(
        self,
        tenant: str,
        feature: str,
        quantity: int,
        answer: Materialised,
        *,
        now: float,
        valid_until: float | None,
        stale: bool,
        epoch: int,
    ) -> None:
        if self.max_entries == 0 or self.max_bytes <= 0 or epoch != self.epoch:
            return
        expires = now + self.ttl_s if self.ttl_s > 0 else math.inf
        if valid_until is not None and valid_until < expires:
            expires = valid_until
        reason = self._reason_of(answer.reason)
        if expires <= now or reason is None:
            return
        flags = (_STALE if stale else 0) | (_ALLOW if answer.allow else 0)
        bound = answer.bound
        if bound is None:
            packed = _HEADER.pack(expires, flags, reason) + answer.head
        else:
            start = bound.period_start.encode()
            limit = _NO_LIMIT if bound.limit is None else bound.limit
            extra = _BOUND.pack(bound.used_min, bound.used_max, limit, len(start)) + start
            packed = _HEADER.pack(expires, flags | _BOUNDED, reason) + extra + answer.head
        self._store(tenant, entry_key(feature, quantity), packed)
        self._evict()

    def _store(self, tenant: str, key: Key, packed: bytes) -> None:
        entries = self._tenants.get(tenant)
        if entries is None:
            entries = self._tenants[tenant] = {}
            self.bytes += TENANT_OVERHEAD_BYTES
        else:
            self._tenants.move_to_end(tenant)
        old = entries.get(key)
        if old is None:
            self._size += 1
        else:
            self.bytes -= _cost(key, old)
        entries[key] = packed
        self.bytes += _cost(key, packed)

    def _evict(self) -> None:
        while self._tenants and (
            self.bytes > self.max_bytes or (self.max_entries is not None and self._size > self.max_entries)
        ):
            _, evicted = self._tenants.popitem(last=False)  # the least recently written tenant
            self._forget(evicted)

    def _drop(self, entries: dict[Key, bytes], key: Key, packed: bytes) -> None:
        del entries[key]
        self._size -= 1
        self.bytes -= _cost(key, packed)

    def _forget(self, entries: dict[Key, bytes]) -> None:
        self._size -= len(entries)
        self.bytes -= TENANT_OVERHEAD_BYTES + sum(_cost(key, packed) for key, packed in entries.items())

    def _reason_of(self, reason: str) -> int | None:
        index = self._reason_index.get(reason)
        if index is None and len(self._reasons) < _MAX_REASONS:
            index = self._reason_index[reason] = len(self._reasons)
            self._reasons.append(reason)
        return index

    def invalidate(self, tenant: str) -> list[tuple[str, int]]:
        """Drop `tenant`'s answers; returns their (feature, quantity) keys."""
        self.epoch += 1
        entries = self._tenants.pop(tenant, None)
        if entries is None:
            return []
        self._forget(entries)
        return [(key, 1) if isinstance(key, str) else key for key in entries]

    def invalidate_feature(
        self, tenant: str, feature: str, *, keep_bounded: bool = False
    ) -> list[tuple[str, int]]:
        """Drop `tenant`'s answers about `feature` (every quantity), keep its others (and, with
        `keep_bounded`, those that hold up to a bound on the feature's counter, checked when
        read); returns the (feature, quantity) keys dropped."""
        self.epoch += 1
        entries = self._tenants.get(tenant)
        if entries is None:
            return []
        dropped = [
            key
            for key, packed in entries.items()
            if (key == feature or (isinstance(key, tuple) and key[0] == feature))
            and not (keep_bounded and packed[_FLAGS_AT] & _BOUNDED)
        ]
        for key in dropped:
            self._drop(entries, key, entries[key])
        if not entries:
            del self._tenants[tenant]
            self.bytes -= TENANT_OVERHEAD_BYTES
        return [(key, 1) if isinstance(key, str) else key for key in dropped]

    def holds(self, tenant: str, feature: str, quantity: int) -> bool:
        entries = self._tenants.get(tenant)
        return entries is not None and entry_key(feature, quantity) in entries

    def keys_newest_first(self, limit: int) -> list[tuple[str, str, int]]:
        """Up to `limit` (tenant, feature, quantity) keys held, the most recently written tenant's
        first (what a warm start re-decides after everything is dropped)."""
        keys: list[tuple[str, str, int]] = []
        for tenant in reversed(self._tenants):
            for key in self._tenants[tenant]:
                if len(keys) >= limit:
                    return keys
                keys.append((tenant, key, 1) if isinstance(key, str) else (tenant, *key))
        return keys

    def clear(self) -> None:
        self.epoch += 1
        self._tenants.clear()
        self._size = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self._size


def _cost(key: Key, packed: bytes) -> int:
    return ENTRY_OVERHEAD_BYTES + len(packed) + (0 if isinstance(key, str) else KEY_TUPLE_BYTES)
