"""`LocalDecisions`: the sidecar's decisions inside an app's own process, from the pod's replica.

An app that shares the pod's volume with its sidecar opens the replica and the usage outbox
read-only, loads the same policies and catalog on the embedded engine, and asks the sidecar's
own `DecisionService` (cache, ledger overlay, lineage): same code, same answers, no HTTP hop.
The sidecar stays the only writer. Before each check it notices what the sidecar committed
since (the replica's and the outbox's `PRAGMA data_version`, a few µs), so usage recorded
through this pod's sidecar counts at once (read-your-writes).

It may over-count for an instant where the sidecar does not: the sidecar learns that the daemon
counted a batch before it writes that down, and only what is written can be seen from here.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from types import TracebackType

from tiergate.amounts import Amount, add, negate
from tiergate.errors import ReplicaError
from tiergate.models import Decision
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.sidecar.decisions.cache import DecisionCache
from tiergate.sidecar.decisions.service import DecisionService
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.policy.reload import PolicyReloader
from tiergate.sidecar.replica.store import ReplicaMeta, ReplicaReader
from tiergate.sidecar.usage.hold_store import held_totals
from tiergate.sidecar.usage.ledger import Key, UsageLedger
from tiergate.sidecar.usage.outbox import _load, _load_gauges


class OutboxLedger(UsageLedger):
    """The pending usage of this pod's sidecar as its outbox file holds it (read-only)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._seen: tuple[int, int | None] | None = None  # (outbox data_version, replica position)
        self._counted: dict[Key, Amount] = {}

    def sync(self, position: int | None) -> None:
        """Count what the outbox holds that the replica at `position` lacks; drop the rest."""
        conn = self._connect()
        if conn is None:
            return
        seen = (conn.execute("PRAGMA data_version").fetchone()[0], position)
        if seen == self._seen:
            return
        self._seen = seen
        unconfirmed, confirmed, _, _ = _load(conn, position)
        fresh: dict[Key, Amount] = {}
        pending = [
            *unconfirmed,
            *(item for d in confirmed.values() for item in d.items()),
            *held_totals(conn),
        ]
        for key, value in pending:
            fresh[key] = add(fresh.get(key, 0), value)
        for key in self._counted.keys() | fresh.keys():
            delta = add(fresh.get(key, 0), negate(self._counted.get(key, 0)))
            if delta:
                self.add(key, delta)  # tells the subscribers (the decision cache) the tenant changed
        self._counted = fresh
        self.replace_gauges((key, at, value, row) for key, at, value, row, _ in _load_gauges(conn, position))

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and self.path.is_file():  # the sidecar creates it on its first start
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            with contextlib.suppress(sqlite3.OperationalError):  # not migrated yet: try again later
                conn.execute("SELECT 1 FROM outbox LIMIT 1")
                self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class LocalDecisions:
    """`check` answers as the pod's sidecar would, in process. Use from one event loop:

        async with LocalDecisions(replica_path=..., plans=..., policies=...) as local:
            decision = await local.check("acme", "reports")

    `staleness_budget_s` should be the sidecar's `TIERGATE_STALENESS_BUDGET_S` when it follows a
    daemon (None: a static replica, never stale), as the sidecar itself decides.
    """

    def __init__(
        self,
        *,
        replica_path: Path,
        plans: Path,
        policies: Path,
        outbox_path: Path | None = None,
        staleness_budget_s: float | None = None,
        cache_size: int = 100_000,
        cache_ttl_s: float = 30.0,
    ) -> None:
        self.replica_path = replica_path
        self.plans = plans
        self.policies = policies
        self.outbox_path = outbox_path or replica_path.with_name("outbox.db")
        self.staleness_budget_s = staleness_budget_s
        self.cache_size = cache_size
        self.cache_ttl_s = cache_ttl_s
        self._service: DecisionService | None = None
        self._reader: ReplicaReader | None = None
        self._ledger: OutboxLedger | None = None
        self._reloader: PolicyReloader | None = None
        self._engine: EmbeddedEngine | None = None

    async def open(self) -> None:
        if not self.replica_path.is_file():
            raise ReplicaError(
                f"replica {self.replica_path} does not exist: is the sidecar's volume mounted?"
            )
        self._engine = engine = EmbeddedEngine(compiled=True)
        self._reader = reader = ReplicaReader(self.replica_path, read_only=True)
        self._ledger = ledger = OutboxLedger(self.outbox_path)
        metrics = SidecarMetrics(replica_age=lambda: 0.0)
        cache = DecisionCache(self.cache_size, self.cache_ttl_s)
        self._service = DecisionService(
            reader,
            engine,
            metrics,
            cache=cache,
            ledger=ledger,
            log_sample=0.0,
            log_denies=False,
            staleness_budget_s=self.staleness_budget_s,
        )
        reader.subscribe(self._replica_changed)
        self._reloader = reloader = PolicyReloader(
            engine, self.policies, self.plans, on_reload=lambda _: cache.clear()
        )
        self._service.catalog = lambda: reloader.bundle.catalog if reloader.bundle else None
        await self._reloader.start()

    def _replica_changed(self, meta: ReplicaMeta, tenants: set[str] | None) -> None:
        # Another process committed: which tenants it touched is not known here, so every answer goes.
        if self._service is not None:
            self._service.cache.clear()

    async def check(self, tenant: str, feature: str, quantity: int = 1) -> Decision:
        service, reader, ledger = self._require()
        reader.refresh()
        ledger.sync(reader.meta.position)
        return await service.decide(tenant, feature, quantity)

    async def check_batch(self, checks: list[tuple[str, str, int]]) -> tuple[Decision, ...]:
        return tuple([await self.check(*check) for check in checks])

    def _require(self) -> tuple[DecisionService, ReplicaReader, OutboxLedger]:
        if self._service is None or self._reader is None or self._ledger is None:
            raise RuntimeError("LocalDecisions is not open: use `async with` or `await open()`")
        return self._service, self._reader, self._ledger

    async def close(self) -> None:
        if self._reloader is not None:
            await self._reloader.stop()
        if self._reader is not None:
            self._reader.close()
        if self._ledger is not None:
            self._ledger.close()
        if self._engine is not None:
            # Now, on this thread: regorus objects dropped by a garbage collection on another
            # thread (the service and the reader reference each other) would panic there.
            await self._engine.close()
        self._service = self._reader = self._ledger = self._reloader = self._engine = None

    async def __aenter__(self) -> LocalDecisions:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
