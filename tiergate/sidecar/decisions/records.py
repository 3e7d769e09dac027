"""Recent decisions with the input that produced them: every deny, a sample of allows, bounded by bytes.

`GET /v1/decisions/{decision_id}` reads them back; deny records also wait in a bounded queue for
the usage delivery task to ship to the daemon (`POST /v1/decisions/batch`), which keeps them for
support. When the queue is full the oldest record waiting is dropped and counted.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson

SHIP_BATCH = 100  # records per POST to the daemon


class DecisionRecords:
    def __init__(
        self,
        max_bytes: int,
        *,
        allow_sample: float = 0.01,
        ship_queue: int = 1000,
        on_drop: Callable[[int], None] = lambda n: None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.max_bytes = max_bytes
        self.allow_sample = allow_sample
        self.on_drop = on_drop
        self._sample = sample
        self._kept: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.bytes = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self.ship_queue = ship_queue
        self.dropped = 0

    def wants(self, allow: bool) -> bool:
        """Whether this decision is recorded: every deny, a sampled share of allows (off at 0 bytes)."""
        if self.max_bytes <= 0:
            return False
        return not allow or (self.allow_sample > 0 and self._sample() < self.allow_sample)

    def keep(self, decision_id: str, record: dict[str, Any]) -> None:
        raw = orjson.dumps(record)
        if len(raw) > self.max_bytes:
            return
        self._kept[decision_id] = raw
        self.bytes += len(raw)
        while self.bytes > self.max_bytes:
            _, oldest = self._kept.popitem(last=False)
            self.bytes -= len(oldest)
        if record["decision"]["allow"] is False and self.ship_queue > 0:
            self._enqueue([raw])

    def get(self, decision_id: str) -> dict[str, Any] | None:
        raw = self._kept.get(decision_id)
        return None if raw is None else orjson.loads(raw)

    def take(self, limit: int = SHIP_BATCH) -> list[bytes]:
        """The oldest deny records waiting to be shipped (the caller ships them or `give_back`s them)."""
        return [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]

    def drop(self, records: Sequence[bytes]) -> None:
        """A shipment the daemon refused: never retried, counted as dropped."""
        self.dropped += len(records)
        self.on_drop(len(records))

    def give_back(self, records: Sequence[bytes]) -> None:
        """A shipment that failed goes back to the front, as long as the queue has room."""
        self._queue.extendleft(reversed(records))
        self._trim()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _enqueue(self, records: Sequence[bytes]) -> None:
        self._queue.extend(records)
        self._trim()

    def _trim(self) -> None:
        over = len(self._queue) - self.ship_queue
        if over > 0:
            for _ in range(over):
                self._queue.popleft()
            self.dropped += over
            self.on_drop(over)
