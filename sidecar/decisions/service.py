"""The decision service: cache, else replica lookup + pending usage -> policy engine; plus lineage."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from sidecar.decisions.cache import DecisionCache
from sidecar.decisions.policy_io import (
    PolicyAnswerError,
    account_document,
    build_input,
    expiry_epoch,
    parse_answer,
    period_for,
    policy_error_decision,
)
from sidecar.metrics import SidecarMetrics
from sidecar.policy.engine import DECISION_PATH, ROUTE_PATH, PolicyEngine
from sidecar.replica.store import ReplicaReader
from sidecar.usage.ledger import PendingUsage
from tiergate.errors import PolicyError, TierError
from tiergate.periods import rfc3339

log = structlog.get_logger("tiergate.sidecar")

# How often a decision checks for commits by other connections (an import, or the follower's
# data_as_of). The follower's batches invalidate their tenants at once, without waiting for this.
REFRESH_EVERY_S = 0.05

# Longest a decision waits for a usage delivery's answer when the replica may already hold it.
FLIGHT_WAIT_S = 0.5


class DecisionService:
    """Answers (tenant, feature, quantity) from the local replica; never raises for a policy fault."""

    def __init__(
        self,
        reader: ReplicaReader,
        engine: PolicyEngine,
        metrics: SidecarMetrics,
        *,
        cache: DecisionCache,
        log_sample: float = 0.01,
        log_denies: bool = True,
        staleness_budget_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.engine = engine
        self.metrics = metrics
        self.cache = cache
        self.log_sample = log_sample
        self.log_denies = log_denies
        self.staleness_budget_s = staleness_budget_s
        self.clock = clock
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._now_second = -1
        self._now_text = ""
        self.pending: PendingUsage | None = None  # usage accepted here, not in the replica yet
        self._generation = -1
        self._as_of_epoch: float | None = None
        self._as_of_text: str | None = None
        self._refreshed_at = 0.0
        self._meta = self.reader.meta
        self._adopt_meta()

    def replica_age(self, now: float | None = None) -> float | None:
        as_of = self._as_of_epoch
        if as_of is None:
            return None
        return max(0.0, (self.clock() if now is None else now) - as_of)

    def is_stale(self, age: float | None = None) -> bool:
        if self.staleness_budget_s is None:
            return False
        age = self.replica_age() if age is None else age
        return age is None or age > self.staleness_budget_s

    def refresh(self) -> bool:
        """Notice commits by other connections (~3 µs); a new generation (an import, a snapshot)
        replaces every answer. Incremental feed batches invalidate their tenants themselves.

        Other readers of the replica (readiness, status, usage delivery) refresh it too, so what
        counts is whether the reader holds a meta this service has not adopted yet."""
        self.reader.refresh()
        if self.reader.meta is self._meta:
            return False
        self._adopt_meta()
        return True

    def _adopt_meta(self) -> None:
        meta = self._meta = self.reader.meta
        if meta.generation != self._generation:
            self._generation = meta.generation
            self.cache.clear()
        self._as_of_epoch = meta.data_as_of.timestamp() if meta.data_as_of else None
        self._as_of_text = rfc3339(meta.data_as_of)

    def replica_changed(self, tenants: set[str] | None) -> None:
        """The follower applied a batch touching `tenants` (None: everything, e.g. a snapshot)."""
        if tenants is None:
            self.cache.clear()
        else:
            for tenant in tenants:
                self.cache.invalidate(tenant)

    async def decide(self, tenant: str, feature: str, quantity: int = 1) -> dict[str, Any]:
        started = time.perf_counter()
        now = self.clock()
        if now - self._refreshed_at >= REFRESH_EVERY_S:
            self._refreshed_at = now
            self.refresh()
        age = self.replica_age(now)
        stale = self.is_stale(age)
        # Pending usage invalidates its tenant when it changes (read-your-writes); while a delivery
        # of the tenant's usage awaits its answer, the overlay may have to wait: decide fresh.
        cacheable = self.pending is None or not self.pending.in_flight(tenant)
        answer = self.cache.get(tenant, feature, quantity, now, stale) if cacheable else None
        if answer is not None:
            self.metrics.cache_hit.inc()
        else:
            self.metrics.cache_miss.inc()
            epoch = self.cache.epoch
            answer = await self._decide_fresh(tenant, feature, quantity, now, age)
            if cacheable and answer["reason"] != "policy_error":
                valid_until = expiry_epoch(answer["valid_until"])
                self.cache.put(
                    tenant,
                    feature,
                    quantity,
                    answer,
                    now=now,
                    valid_until=valid_until,
                    stale=stale,
                    epoch=epoch,
                )
        decision = {
            **answer,
            "tenant": tenant,
            "feature": feature,
            "quantity": quantity,
            "decision_id": f"{self._id_prefix}-{next(self._ids)}",
            "policy_revision": self.engine.revision or "",
            "data_as_of": self._as_of_text,
            "stale": stale,
        }
        self.metrics.count_decision(decision["reason"], decision["allow"])
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self._log(decision)
        return decision

    async def _decide_fresh(
        self, tenant: str, feature: str, quantity: int, now: float, age: float | None
    ) -> dict[str, Any]:
        """Replica lookups plus pending usage, then the policy."""
        now_text = self._now_rfc3339(now)
        row = self.reader.account(tenant)
        period = period_for(row, datetime.fromtimestamp(now, UTC), now_text)
        usage = self.reader.usage(tenant, period[0])
        if self.pending is not None:
            while self.refresh():  # a commit landed after the first read: position and usage must agree
                usage = self.reader.usage(tenant, period[0])
            if self.pending.ambiguous(tenant, period[0], self.reader.meta.position):
                await self.pending.flight_answered(FLIGHT_WAIT_S)  # else over-count, never under
                self.refresh()
                usage = self.reader.usage(tenant, period[0])
                while self.refresh():
                    usage = self.reader.usage(tenant, period[0])
            usage = self.pending.overlay(tenant, period[0], usage, self.reader.meta.position)
        document = build_input(
            tenant=tenant,
            feature=feature,
            quantity=quantity,
            now_text=now_text,
            account=account_document(row),
            usage=usage,
            period=period,
            replica_age_s=age,
        )
        return await self._evaluate(document, row.tier if row else None)

    async def _evaluate(self, document: dict[str, Any], tier: str | None) -> dict[str, Any]:
        try:
            return parse_answer(await self.engine.evaluate(DECISION_PATH, document))
        except (TierError, PolicyAnswerError) as exc:
            kind = getattr(exc, "code", "bad_answer")
            self.metrics.engine_errors.labels(kind).inc()
            log.error("policy_evaluation_failed", kind=kind, error=str(exc), tenant=document["tenant"])
            return policy_error_decision(tier)

    def _now_rfc3339(self, now: float) -> str:
        second = int(now)
        if second != self._now_second:
            self._now_second = second
            self._now_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._now_text

    def _log(self, decision: dict[str, Any]) -> None:
        if not (decision["allow"] is False and self.log_denies) and (
            self.log_sample <= 0 or random.random() >= self.log_sample
        ):
            return
        log.info(
            "decision",
            decision_id=decision["decision_id"],
            tenant=decision["tenant"],
            feature=decision["feature"],
            quantity=decision["quantity"],
            allow=decision["allow"],
            reason=decision["reason"],
            tier=decision["tier"],
            policy_revision=decision["policy_revision"],
            data_as_of=decision["data_as_of"],
            stale=decision["stale"],
        )


class RouteResolver:
    """Maps (method, path) to the route the ingress policy picks, cached per policy revision."""

    def __init__(self, engine: PolicyEngine, max_entries: int = 10_000) -> None:
        self.engine = engine
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str, str], dict[str, Any]] = {}

    async def resolve(self, method: str, path: str) -> dict[str, Any]:
        """Raises TierError when the ingress policy cannot answer."""
        key = (method, path, self.engine.revision or "")
        route = self._cache.get(key)
        if route is None:
            answer = await self.engine.evaluate(ROUTE_PATH, {"method": method, "path": path})
            if not isinstance(answer, dict) or not isinstance(answer.get("matched"), bool):
                raise PolicyError(f"{ROUTE_PATH} must be an object with 'matched', got {answer!r}")
            route = answer
            if len(self._cache) >= self.max_entries:
                self._cache.clear()  # paths are attacker-chosen: bound the memory bluntly
            self._cache[key] = route
        return route
