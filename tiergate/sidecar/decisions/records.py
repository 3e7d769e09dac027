"""Recent decisions with the input that produced them: every deny, a sample of allows, bounded by bytes.

`GET /v1/decisions/{decision_id}` reads them back; deny records also wait in a bounded queue for
the usage delivery task to ship to the daemon (`POST /v1/decisions/batch`), which keeps them for
support. When the queue is full the oldest record waiting is dropped and counted.

A decision is kept as what it already is (`Pending`): the decision object or its rendered bytes,
the time, the replica position, the account version, and a reference to its input's JSON (the
same bytes object every cached deny of that answer shares). The record's JSON is put together
only when it is read or shipped, never on the decision path (docs/adr/0046).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

SHIP_BATCH = 100  # records per POST to the daemon
INPUTS_KEPT = 10_000  # tenants whose fresh denies' inputs are kept for the cached answers they produced

Key = tuple[str, str, int]  # (tenant, feature, quantity)
Kept = tuple[bytes, bytes, int | None]  # (the answer's bytes, the input's JSON, the account version)
PENDING_OVERHEAD = 1024  # bytes counted for a pending record besides its input (a generous bound)


class DecisionBody(Protocol):
    """tiergate.models.Decision (frozen): its JSON object on demand."""

    def body(self) -> dict[str, Any]: ...


class Pending:
    """A decision waiting to become a record's JSON: only references, nothing copied or rendered."""

    __slots__ = ("account_version", "allow", "at", "decision", "input_raw", "position")

    def __init__(
        self,
        decision: DecisionBody | bytes,
        allow: bool,
        at: str,
        position: int | None,
        account_version: int | None,
        input_raw: bytes,
    ) -> None:
        self.decision = decision  # a Decision, or the rendered decision's JSON
        self.allow = allow
        self.at = at
        self.position = position
        self.account_version = account_version
        self.input_raw = input_raw

    @property
    def size(self) -> int:
        return PENDING_OVERHEAD + len(self.input_raw)

    def render(self, decision_id: str) -> bytes:
        """The record as GET /v1/decisions/{id} answers it and the daemon stores it."""
        decision = self.decision
        body = orjson.loads(decision) if isinstance(decision, bytes) else decision.body()
        record = {
            "decision_id": decision_id,
            "at": self.at,
            "decision": body,
            "policy_revision": body["policy_revision"],
            "replica": {"position": self.position, "data_as_of": body["data_as_of"]},
            "account_version": self.account_version,
        }
        return with_input(orjson.dumps(record), self.input_raw)


def with_input(record_raw: bytes, input_raw: bytes) -> bytes:
    """A record's JSON object with `"input": <input_raw>` as its last member."""
    return record_raw[:-1] + b',"input":' + input_raw + b"}"


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
        self._kept: collections.OrderedDict[str, bytes | Pending] = collections.OrderedDict()
        self.bytes = 0
        self._queue: collections.deque[tuple[str, Pending] | bytes] = collections.deque()
        self.ship_queue = ship_queue
        self.dropped = 0
        # The input of each key's newest fresh deny, with the answer it produced: a cached deny
        # with that same answer was decided from that same input (the cache drops an answer when
        # the tenant's data or usage changes), so it is recorded without rebuilding the input.
        # The decision service forgets a tenant's inputs whenever it drops the tenant's answers.
        self._inputs: collections.OrderedDict[str, dict[tuple[str, int], Kept]] = collections.OrderedDict()

    def wants(self, allow: bool) -> bool:
        """Whether this decision is recorded: every deny, a sampled share of allows (off at 0 bytes)."""
        if self.max_bytes <= 0:
            return False
        return not allow or (self.allow_sample > 0 and self._sample() < self.allow_sample)

    def remember(self, key: Key, answer: bytes, document: dict[str, Any], version: int | None) -> bytes:
        """The input of a fresh deny (`answer`: its materialised bytes); returns the input's JSON."""
        raw = orjson.dumps(document)
        tenant, feature, quantity = key
        self._inputs.setdefault(tenant, {})[(feature, quantity)] = (answer, raw, version)
        self._inputs.move_to_end(tenant)
        if len(self._inputs) > INPUTS_KEPT:
            self._inputs.popitem(last=False)
        return raw

    def recall(self, key: Key, answer: bytes) -> tuple[bytes, int | None] | None:
        """The input that produced this same answer for `key`, if it is still kept."""
        tenant, feature, quantity = key
        found = self._inputs.get(tenant, {}).get((feature, quantity))
        if found is None or found[0] != answer:
            return None
        return found[1], found[2]

    def forget(self, tenant: str | None) -> None:
        """The tenant's data or usage changed (None: everyone's): its kept inputs no longer hold."""
        if tenant is None:
            self._inputs.clear()
        else:
            self._inputs.pop(tenant, None)

    def keep(self, decision_id: str, record: dict[str, Any], input_raw: bytes | None = None) -> None:
        """Keep `record` as JSON now; `input_raw`, when given, is its `input` already as JSON."""
        raw = orjson.dumps(record)
        if input_raw is not None:
            raw = with_input(raw, input_raw)
        self._store(decision_id, raw, len(raw), allow=record["decision"]["allow"] is not False)

    def keep_pending(self, decision_id: str, pending: Pending) -> None:
        """Keep a decision as references; its JSON is made when it is read or shipped."""
        self._store(decision_id, pending, pending.size, allow=pending.allow)

    def _store(self, decision_id: str, kept: bytes | Pending, size: int, *, allow: bool) -> None:
        if size > self.max_bytes:
            return
        self._kept[decision_id] = kept
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, oldest = self._kept.popitem(last=False)
            self.bytes -= _size(oldest)
        if not allow and self.ship_queue > 0:
            self._queue.append(kept if isinstance(kept, bytes) else (decision_id, kept))
            if len(self._queue) > self.ship_queue:
                self._trim()

    def get(self, decision_id: str) -> dict[str, Any] | None:
        kept = self._kept.get(decision_id)
        if kept is None:
            return None
        found: dict[str, Any] = orjson.loads(kept if isinstance(kept, bytes) else kept.render(decision_id))
        return found

    def take(self, limit: int = SHIP_BATCH) -> list[bytes]:
        """The oldest deny records waiting to be shipped, as JSON (the caller ships them or
        `give_back`s them)."""
        taken = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
        return [item if isinstance(item, bytes) else item[1].render(item[0]) for item in taken]

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

    def _trim(self) -> None:
        over = len(self._queue) - self.ship_queue
        if over > 0:
            for _ in range(over):
                self._queue.popleft()
            self.dropped += over
            self.on_drop(over)


def _size(kept: bytes | Pending) -> int:
    return len(kept) if isinstance(kept, bytes) else kept.size
