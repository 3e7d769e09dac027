"""The trace each accepted usage event arrived under, kept until delivery sends it on to the daemon.

In memory only and bounded (the oldest are dropped first): a trace is a diagnosis aid, so events
that outlive a restart, or a very long outage, are delivered without one rather than costing disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

Key = tuple[str, str]  # (tenant, transaction id)


class TraceMarks:
    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._marks: OrderedDict[Key, str] = OrderedDict()

    def remember(self, keys: Iterable[Key], traceparent: str) -> None:
        for key in keys:
            self._marks[key] = traceparent
            self._marks.move_to_end(key)
        while len(self._marks) > self.limit:
            self._marks.popitem(last=False)

    def of(self, keys: Iterable[Key]) -> list[str]:
        """The distinct traceparents of these events, in their order (events without one skipped)."""
        found = (self._marks.get(key) for key in keys)
        return list(dict.fromkeys(t for t in found if t is not None))

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._marks.pop(key, None)

    def __len__(self) -> int:
        return len(self._marks)
