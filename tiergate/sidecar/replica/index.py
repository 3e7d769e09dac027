"""The replica in memory: what the decision path reads instead of SQLite.

Accounts by tenant, each tenant's usage counters and feature overrides, loaded from the replica
file in one read transaction at start (and again after an import or a snapshot), and reloaded tenant by tenant
for every feed batch the follower commits, on the event loop, before its position is adopted.
So a decision never reads SQLite, and the counters it reads always belong to the position the
reader reports (what the usage ledger's read-your-writes needs). The file stays the durable copy.

Layout (docs/adr/0011-decisions-from-memory.md): a million tenants must fit in well under 300 MB
of RSS (issue 15), so a tenant is one `bytes` record — its id, its account row and its counters packed with `struct`
(times as epoch seconds, tier/status/metric names as indices into one table of words) — found
through an open-addressing hash table kept in two `array`s, not through a dict of Python objects.
A row the packing cannot hold exactly (a time not in the canonical `...Z` form, a quantity or
version beyond 64 bits) keeps its tenant as plain tuples in a small side dict instead: answers
are always the stored values, byte for byte (counters: the exact amounts, tiergate/amounts.py).
"""

from __future__ import annotations

import struct
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from typing import Any

from tiergate.amounts import Amount, from_stored, stored
from tiergate.feed import FeedCredits
from tiergate.sidecar.replica.rows import AccountRow
from tiergate.usage_events import GAUGE_PERIOD_START

# (tenant, period_start, code, value) as the file stores it: an int, or a decimal's text
UsageRow = tuple[str, str, str, int | str]
Counter = tuple[str, str, Amount]  # (period_start, code, exact value) of one tenant
Overrides = dict[str, dict[str, Any]]  # feature -> {"value", "expires_at"}, as the policy reads them
Credits = dict[str, FeedCredits]  # credit type -> the tenant's state of it (grants and debt)

# -- the record of one tenant -----------------------------------------------------------------
#   _HEAD: id length, offset of the counters, flags, tier, status, quantity, version, period
#     start, period end (the account's fields are zeros when `flags` has _NO_ACCOUNT),
#   the id (UTF-8),
#   as `flags` says: trial_end, past_due_since, pending_tier, pending_interval, pending_at,
#     subscription_id (u16 length + UTF-8), addons (u32 length + UTF-8 JSON),
#   the counters: u16 number of periods, then per period _GROUP (start, count, width) and
#     `count` metric words, then `count` values (_pack_values).

_HEAD = struct.Struct("<HIHHHqqqq")
_LENGTH = struct.Struct("<H")
_OFFSET = struct.Struct("<I")
_EPOCH = struct.Struct("<q")
_WORD = struct.Struct("<H")
_GROUP = struct.Struct("<qHB")

_CANCEL, _TRIAL, _PAST_DUE, _PENDING_TIER, _PENDING_INTERVAL, _PENDING_AT, _SUBSCRIPTION, _ADDONS = (
    1 << bit for bit in range(8)
)
_NO_ACCOUNT = 1 << 8  # a tenant with counters only
_OPTIONAL = 0xFE  # any of trial_end .. addons: something follows the id
_NO_TIME = -(2**63)  # a period bound that is NULL
_INT64 = range(-(2**63) + 1, 2**63)
_INT32 = range(-(2**31), 2**31)
_MAX_WORDS = 0xFFFF


class _Unpackable(Exception):
    """This tenant's rows do not fit the packed record exactly: keep them as tuples."""


# The record codec sees these fields in this order; a new column must be taught to it (a test
# compares the two).
PACKED_FIELDS = (
    "tenant",
    "tier",
    "status",
    "quantity",
    "current_period_start",
    "current_period_end",
    "trial_end",
    "cancel_at_period_end",
    "past_due_since",
    "version",
    "pending_tier",
    "pending_interval",
    "pending_at",
    "subscription_id",
    "addons",
)

_DAY_S = 86_400
_CLOCK = [f"T{minute // 60:02d}:{minute % 60:02d}:" for minute in range(24 * 60)]
_SECONDS = [f"{second:02d}Z" for second in range(60)]
_dates: dict[int, str] = {}  # day number -> "YYYY-MM-DD"; a few thousand distinct days at most


def _format_time(epoch: int) -> str:
    """`%Y-%m-%dT%H:%M:%SZ` of epoch seconds, from cached pieces (strftime costs ~1.5 µs)."""
    day, second = divmod(epoch, _DAY_S)
    date = _dates.get(day)
    if date is None:
        date = time.strftime("%Y-%m-%d", time.gmtime(day * _DAY_S))
        if len(_dates) < 100_000:
            _dates[day] = date
    minute, second = divmod(second, 60)
    return date + _CLOCK[minute] + _SECONDS[second]


# A decision renders its tenant's period start for the account, then again for the usage.
_render_time = lru_cache(maxsize=4096)(_format_time)


def _epoch(text: str) -> int:
    """Epoch seconds of a canonical RFC 3339 `Z` time; anything else cannot be packed."""
    global _last_epoch  # a tenant's counters mostly start where its period does
    last = _last_epoch  # one read: a loader thread may replace it meanwhile
    if text == last[0]:
        return last[1]
    try:
        epoch = int(datetime.fromisoformat(text).timestamp())
    except (ValueError, OverflowError, OSError):
        raise _Unpackable from None
    if _format_time(epoch) != text:  # fractions, offsets, other spellings: kept as written
        raise _Unpackable
    _last_epoch = (text, epoch)
    return epoch


_last_epoch = ("", 0)


def _int64(value: object) -> int:
    if type(value) is not int or value not in _INT64:
        raise _Unpackable
    return value


# -- counter values: the one place they are packed and unpacked --------------------------------
# A period's values are one run of a single width: 0 = int32, 1 = int64, 2 = decimal text (each
# value as `stored()` writes it, after a length byte; tiergate/amounts.py).
_DECIMALS = 2


def _amount(value: object) -> Amount:
    """A counter as the file stores it (an int, or a decimal's text), exactly."""
    return value if type(value) is int else from_stored(value)


def _pack_values(values: list[Amount]) -> tuple[int, bytes]:
    """(width, packed values)."""
    if all(type(v) is int and v in _INT32 for v in values):
        return 0, _run(len(values), 0).pack(*values)
    if all(type(v) is int and v in _INT64 for v in values):
        return 1, _run(len(values), 1).pack(*values)
    texts = [str(stored(v)).encode() for v in values]
    if any(len(text) > 0xFF for text in texts):
        raise _Unpackable
    return _DECIMALS, b"".join(bytes((len(text),)) + text for text in texts)


def _unpack_values(record: bytes, at: int, count: int, width: int) -> tuple[Sequence[Amount], int]:
    """The values of a run and where it ends."""
    if width != _DECIMALS:
        run = _run(count, width)
        return run.unpack_from(record, at), at + run.size
    values: list[Amount] = []
    for _ in range(count):
        length = record[at]
        values.append(from_stored(record[at + 1 : at + 1 + length].decode()))
        at += 1 + length
    return values, at


def _values_end(record: bytes, at: int, count: int, width: int) -> int:
    if width != _DECIMALS:
        return at + _run(count, width).size
    for _ in range(count):
        at += 1 + record[at]
    return at


@lru_cache(maxsize=256)
def _run(count: int, width: int) -> struct.Struct:
    return struct.Struct(f"<{count}{'iq'[width]}")


@lru_cache(maxsize=256)
def _words_run(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}H")


class _Words:
    """Tier, status, interval and metric names: each stored once, records hold its index."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._codes: dict[str, int] = {}

    def code(self, text: object) -> int:
        if type(text) is not str:
            raise _Unpackable
        found = self._codes.get(text)
        if found is not None:
            return found
        if len(self.texts) >= _MAX_WORDS:
            raise _Unpackable
        self._codes[text] = len(self.texts)
        self.texts.append(text)
        return len(self.texts) - 1


def _text(value: object, size: struct.Struct) -> bytes:
    if type(value) is not str:
        raise _Unpackable
    data = value.encode()
    if len(data) >= 1 << (8 * size.size):
        raise _Unpackable
    return size.pack(len(data)) + data


_NO_ACCOUNT_FIELDS: tuple[int, ...] = (_NO_ACCOUNT, 0, 0, 0, 0, 0, 0)


def _pack(tenant: str, row: AccountRow | None, counters: list[Counter], words: _Words) -> bytes:
    """The tenant's record; raises _Unpackable when some value would not come back unchanged."""
    key = tenant.encode()
    if len(key) > 0xFFFF:
        raise _Unpackable
    if row is None:
        fields, tail = _NO_ACCOUNT_FIELDS, b""
    else:
        fields, tail = _account_fields(row, words)
    counters_at = _HEAD.size + len(key) + len(tail)
    return _HEAD.pack(len(key), counters_at, *fields) + key + tail + _pack_counters(counters, words)


def _account_fields(row: AccountRow, words: _Words) -> tuple[tuple[int, ...], bytes]:
    """The head's account fields (flags .. period end) and the optional fields' bytes."""
    if row.cancel_at_period_end not in (0, 1) or type(row.cancel_at_period_end) is not int:
        raise _Unpackable
    flags, tail = _CANCEL if row.cancel_at_period_end else 0, b""
    if row[6:9:2] != (None, None) or row[10:15] != (None, None, None, None, None):
        flags, tail = _pack_optional(row, words, flags)
    fields = (
        flags,
        words.code(row.tier),
        words.code(row.status),
        _int64(row.quantity),
        _int64(row.version),
        _NO_TIME if row.current_period_start is None else _epoch(row.current_period_start),
        _NO_TIME if row.current_period_end is None else _epoch(row.current_period_end),
    )
    return fields, tail


def _pack_optional(row: AccountRow, words: _Words, flags: int) -> tuple[int, bytes]:
    """The fields most rows leave NULL, each behind its flag, in `_unpack_optional`'s order."""
    tail: list[bytes] = []
    for flag, value, pack in (
        (_TRIAL, row.trial_end, _packed_time),
        (_PAST_DUE, row.past_due_since, _packed_time),
        (_PENDING_TIER, row.pending_tier, lambda v: _WORD.pack(words.code(v))),
        (_PENDING_INTERVAL, row.pending_interval, lambda v: _WORD.pack(words.code(v))),
        (_PENDING_AT, row.pending_at, _packed_time),
        (_SUBSCRIPTION, row.subscription_id, lambda v: _text(v, _LENGTH)),
        (_ADDONS, row.addons, lambda v: _text(v, _OFFSET)),
    ):
        if value is not None:
            flags |= flag
            tail.append(pack(value))
    return flags, b"".join(tail)


def _packed_time(value: str) -> bytes:
    return _EPOCH.pack(_epoch(value))


def _pack_counters(counters: list[Counter], words: _Words) -> bytes:
    if not counters:
        return b"\x00\x00"  # no period
    periods: dict[str, tuple[list[int], list[Amount]]] = {}
    for period_start, code, value in counters:
        group = periods.get(period_start)
        if group is None:
            group = periods[period_start] = ([], [])
        group[0].append(words.code(code))
        group[1].append(value)
    if len(periods) > 0xFFFF or any(len(codes) > 0xFFFF for codes, _ in periods.values()):
        raise _Unpackable
    parts = [_LENGTH.pack(len(periods))]
    for period_start, (codes, values) in periods.items():
        width, packed = _pack_values(values)
        parts.append(_GROUP.pack(_epoch(period_start), len(codes), width))
        parts.append(_words_run(len(codes)).pack(*codes) + packed)
    return b"".join(parts)


def _unpack_account(tenant: str, record: bytes, words: list[str]) -> AccountRow | None:
    length, _, flags, tier, status, quantity, version, start, end = _HEAD.unpack_from(record)
    if flags & _NO_ACCOUNT:
        return None
    optional: list[str | None] = [None] * 7
    if flags & _OPTIONAL:
        _unpack_optional(flags, record, _HEAD.size + length, words, optional)
    trial_end, past_due_since, pending_tier, pending_interval, pending_at, subscription_id, addons = optional
    return tuple.__new__(  # AccountRow(...) without its keyword handling: ~0.4 µs less
        AccountRow,
        (
            tenant,
            words[tier],
            words[status],
            quantity,
            None if start == _NO_TIME else _render_time(start),
            None if end == _NO_TIME else _render_time(end),
            trial_end,
            flags & _CANCEL,
            past_due_since,
            version,
            pending_tier,
            pending_interval,
            pending_at,
            subscription_id,
            addons,
        ),
    )


def _unpack_optional(flags: int, record: bytes, at: int, words: list[str], into: list[str | None]) -> None:
    """The fields after the id, in `_pack_optional`'s order, into `into` (None stays None)."""
    for place, flag in enumerate((_TRIAL, _PAST_DUE)):
        if flags & flag:
            into[place] = _render_time(_EPOCH.unpack_from(record, at)[0])
            at += _EPOCH.size
    for place, flag in ((2, _PENDING_TIER), (3, _PENDING_INTERVAL)):
        if flags & flag:
            into[place] = words[_WORD.unpack_from(record, at)[0]]
            at += _WORD.size
    if flags & _PENDING_AT:
        into[4] = _render_time(_EPOCH.unpack_from(record, at)[0])
        at += _EPOCH.size
    for place, flag, size in ((5, _SUBSCRIPTION, _LENGTH), (6, _ADDONS, _OFFSET)):
        if flags & flag:
            length = size.unpack_from(record, at)[0]
            at += size.size
            into[place] = record[at : at + length].decode()
            at += length


def _unpack_usage(record: bytes, period_start: str, words: list[str]) -> dict[str, Amount]:
    """The counters of `period_start` and the gauges' (which count in every period), in stored
    order."""
    at = _OFFSET.unpack_from(record, _LENGTH.size)[0]
    periods = record[at] | record[at + 1] << 8
    at += _LENGTH.size
    found: dict[str, Amount] = {}
    for _ in range(periods):
        start, count, width = _GROUP.unpack_from(record, at)
        codes = _words_run(count)
        values_at = at + _GROUP.size + codes.size
        if _render_time(start) in (period_start, GAUGE_PERIOD_START):
            names = map(words.__getitem__, codes.unpack_from(record, values_at - codes.size))
            values, at = _unpack_values(record, values_at, count, width)
            found.update(zip(names, values, strict=False))
        else:
            at = _values_end(record, values_at, count, width)
    return found


def _has_account(record: bytes) -> bool:
    return not _HEAD.unpack_from(record)[2] & _NO_ACCOUNT


def _holds(record: bytes, tenant: str) -> bool:
    return record[_HEAD.size : _HEAD.size + (record[0] | record[1] << 8)].decode() == tenant


# -- the tenant table ---------------------------------------------------------------------------

_EMPTY, _DELETED = -1, -2
_MIN_CAPACITY = 8


class ReplicaIndex:
    """Owned by the event-loop thread (or built whole on a loader thread, then handed over).

    Records live in `_records` (a slot each, reused after a delete); `_table` maps hash positions
    to slots with linear probing (`_EMPTY`, `_DELETED` tombstones); `_hashes[slot]` is the
    tenant's `hash()`, so growing the table never unpacks a record.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._words = _Words()
        self._records: list[bytes | None] = []
        self._hashes = array("q")
        self._free: list[int] = []
        self._table = array("i", [_EMPTY]) * _MIN_CAPACITY
        self._live = 0
        self._tombstones = 0
        self._accounts = 0
        # Tenants whose rows the record cannot hold exactly (see the module's docstring).
        self._unpacked: dict[str, tuple[AccountRow | None, list[Counter]]] = {}
        self._overrides: dict[str, Overrides] = {}
        self._credits: dict[str, Credits] = {}
        self._forget_last()

    def _forget_last(self) -> None:
        """Any change to the records: the remembered lookup may be stale."""
        self._last_tenant: str | None = None
        self._last_record: bytes | None = None

    # -- lookups

    def account(self, tenant: str) -> AccountRow | None:
        record = self._record(tenant)
        if record is not None:
            return _unpack_account(tenant, record, self._words.texts)
        unpacked = self._unpacked.get(tenant) if self._unpacked else None
        return unpacked[0] if unpacked else None

    def usage(self, tenant: str, period_start: str) -> dict[str, Amount]:
        record = self._record(tenant)
        if record is not None:
            return _unpack_usage(record, period_start, self._words.texts)
        unpacked = self._unpacked.get(tenant) if self._unpacked else None
        if not unpacked:
            return {}
        # a gauge counts in every period (tiergate/usage_events.py)
        wanted = (period_start, GAUGE_PERIOD_START)
        return {code: value for start, code, value in unpacked[1] if start in wanted}

    def tenant_of_subscription(self, subscription_id: str) -> str | None:
        """The tenant whose account holds this subscription: a scan of every record (the reader
        asks the file's index; this is its fallback while the file is damaged)."""
        for record in self._records:
            if record is None or not _HEAD.unpack_from(record)[2] & _SUBSCRIPTION:
                continue
            tenant = record[_HEAD.size : _HEAD.size + (record[0] | record[1] << 8)].decode()
            row = _unpack_account(tenant, record, self._words.texts)
            if row is not None and row.subscription_id == subscription_id:
                return tenant
        for row, _ in self._unpacked.values():
            if row is not None and row.subscription_id == subscription_id:
                return row.tenant
        return None

    def overrides(self, tenant: str) -> Overrides:
        return self._overrides.get(tenant) or {}

    def credits(self, tenant: str) -> Credits:
        return self._credits.get(tenant) or {}

    def __len__(self) -> int:
        """The number of accounts (tenants with counters only are not counted)."""
        return self._accounts + sum(1 for row, _ in self._unpacked.values() if row is not None)

    def __contains__(self, tenant: str) -> bool:
        return self._slot(tenant) >= 0 or tenant in self._unpacked

    # -- loading

    def replace_all(
        self,
        accounts: Iterable[AccountRow],
        usage: Iterable[UsageRow],
        overrides: dict[str, Overrides],
        credits: dict[str, Credits] | None = None,
    ) -> None:
        """Everything, from rows in tenant order (the tables' primary key order)."""
        self._reset()
        for tenant, row, counters in _by_tenant(accounts, usage):
            try:
                record = _pack(tenant, row, counters, self._words)
            except _Unpackable:
                self._unpacked[tenant] = (row, counters)
                continue
            self._records.append(record)
            self._hashes.append(hash(tenant))
            self._accounts += row is not None
        self._live = len(self._records)
        self._rebuild_table()
        self._overrides = overrides
        self._credits = credits or {}

    def replace_tenants(
        self,
        tenants: Iterable[str],
        accounts: Iterable[AccountRow],
        usage: Iterable[UsageRow],
        overrides: dict[str, Overrides],
        credits: dict[str, Credits] | None = None,
    ) -> None:
        """`tenants`' rows are now `accounts`, `usage`, `overrides` and `credits` (absent: gone)."""
        rows = {row.tenant: row for row in accounts}
        counters: dict[str, list[Counter]] = {}
        for tenant, period_start, code, value in usage:
            counters.setdefault(tenant, []).append((period_start, code, _amount(value)))
        for tenant in tenants:
            self._overrides.pop(tenant, None)
            self._credits.pop(tenant, None)
            if tenant not in rows and tenant not in counters:
                self._remove(tenant)
        for tenant in rows.keys() | counters.keys():
            self._store(tenant, rows.get(tenant), counters.get(tenant, []))
        self._overrides.update(overrides)
        self._credits.update(credits or {})

    # -- the table

    def _record(self, tenant: str) -> bytes | None:
        """The tenant's record; the last one found is kept, since a decision asks for the
        account and then the counters of the same tenant (the same string object)."""
        if tenant is self._last_tenant:
            return self._last_record
        slot = self._slot(tenant)
        record = self._records[slot] if slot >= 0 else None
        self._last_tenant, self._last_record = tenant, record
        return record

    def _slot(self, tenant: str) -> int:
        """The tenant's slot, or -1."""
        digest = hash(tenant)
        table, hashes, records = self._table, self._hashes, self._records
        mask = len(table) - 1
        at = digest & mask
        while True:
            slot = table[at]
            if slot == _EMPTY:
                return -1
            if slot >= 0 and hashes[slot] == digest and _holds(records[slot] or b"", tenant):
                return slot
            at = (at + 1) & mask

    def _position(self, tenant: str, digest: int) -> tuple[int, int]:
        """(table position holding the tenant, or -1; where it would go if absent)."""
        table, hashes, records = self._table, self._hashes, self._records
        mask = len(table) - 1
        at = digest & mask
        free = -1
        while True:
            slot = table[at]
            if slot == _EMPTY:
                return -1, at if free < 0 else free
            if slot == _DELETED:
                free = at if free < 0 else free
            elif hashes[slot] == digest and _holds(records[slot] or b"", tenant):
                return at, at
            at = (at + 1) & mask

    def _store(self, tenant: str, row: AccountRow | None, counters: list[Counter]) -> None:
        self._forget_last()
        try:
            record = _pack(tenant, row, counters, self._words)
        except _Unpackable:
            self._remove(tenant)
            self._unpacked[tenant] = (row, counters)
            return
        self._unpacked.pop(tenant, None)
        digest = hash(tenant)
        found, at = self._position(tenant, digest)
        if found >= 0:
            slot = self._table[found]
            self._accounts += _has_account(record) - _has_account(self._records[slot] or b"")
            self._records[slot] = record
            return
        slot = self._free.pop() if self._free else len(self._records)
        if slot == len(self._records):
            self._records.append(record)
            self._hashes.append(digest)
        else:
            self._records[slot], self._hashes[slot] = record, digest
        self._tombstones -= self._table[at] == _DELETED
        self._table[at] = slot
        self._live += 1
        self._accounts += row is not None
        if (self._live + self._tombstones) * 10 > len(self._table) * 7:
            self._rebuild_table()

    def _remove(self, tenant: str) -> None:
        self._forget_last()
        self._unpacked.pop(tenant, None)
        found, _ = self._position(tenant, hash(tenant))
        if found < 0:
            return
        slot = self._table[found]
        self._accounts -= _has_account(self._records[slot] or b"")
        self._table[found] = _DELETED
        self._records[slot] = None
        self._free.append(slot)
        self._live -= 1
        self._tombstones += 1

    def _rebuild_table(self) -> None:
        """A table at most half full, without tombstones, from the slots' stored hashes."""
        capacity = _MIN_CAPACITY
        while capacity < 2 * self._live:
            capacity *= 2
        table = array("i", [_EMPTY]) * capacity
        mask = capacity - 1
        hashes = self._hashes
        for slot, record in enumerate(self._records):
            if record is None:
                continue
            at = hashes[slot] & mask
            while table[at] != _EMPTY:
                at = (at + 1) & mask
            table[at] = slot
        self._table = table
        self._tombstones = 0


def _by_tenant(
    accounts: Iterable[AccountRow], usage: Iterable[UsageRow]
) -> Iterator[tuple[str, AccountRow | None, list[Counter]]]:
    """Merge two tenant-ordered streams: each tenant once, with its account (or None) and counters."""
    groups = _ordered(groupby(usage, key=itemgetter(0)))
    pending = next(groups, None)
    last = ""
    for row in accounts:
        if row.tenant <= last and last:
            raise ValueError(f"accounts out of tenant order: {row.tenant!r} after {last!r}")
        last = row.tenant
        while pending is not None and pending[0] < row.tenant:
            yield pending[0], None, pending[1]
            pending = next(groups, None)
        if pending is not None and pending[0] == row.tenant:
            yield row.tenant, row, pending[1]
            pending = next(groups, None)
        else:
            yield row.tenant, row, []
    while pending is not None:
        yield pending[0], None, pending[1]
        pending = next(groups, None)


def _ordered(groups: Iterator[tuple[str, Iterator[UsageRow]]]) -> Iterator[tuple[str, list[Counter]]]:
    last = ""
    for tenant, rows in groups:
        if tenant <= last and last:
            raise ValueError(f"usage out of tenant order: {tenant!r} after {last!r}")
        last = tenant
        yield tenant, [(period_start, code, _amount(value)) for _, period_start, code, value in rows]
