"""A bounded decision cache: entries expire at the decision's valid_until or after a TTL."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class DecisionCache:
    """FIFO-bounded dict; the key holds every input the answer depends on, so no invalidation
    is needed beyond time: a changed account row, usage value, period or policy revision is a
    different key, and stale keys age out."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, dict[str, Any]]] = {}

    def get(self, key: Hashable, now: float) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: Hashable, answer: dict[str, Any], now: float, valid_until: float | None) -> None:
        if self.max_entries == 0 or self.ttl_s == 0:
            return
        expires = now + self.ttl_s
        if valid_until is not None and valid_until < expires:
            expires = valid_until
        if expires <= now:
            return
        if len(self._entries) >= self.max_entries:
            # Dicts keep insertion order: drop the oldest entry.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (expires, answer)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
