"""The decision service: cache, else replica lookup + the usage ledger -> policy engine; plus lineage."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import orjson

from tiergate.amounts import policy_units
from tiergate.catalog import Catalog
from tiergate.errors import PolicyError, ReplicaNotReadyError, TierError
from tiergate.log import host_safe_logger
from tiergate.models import Decision, PolicyAnswer
from tiergate.periods import rfc3339
from tiergate.policy.credits_input import (
    CreditPrices,
    balances,
    credits_input,
    override_quota,
)
from tiergate.policy.document import (
    PolicyAnswerError,
    build_input,
    parse_answer,
    policy_error_decision,
    used_range,
)
from tiergate.policy.engine import DECISION_PATH, ROUTE_PATH, PolicyEngine
from tiergate.sidecar.decisions.cache import DecisionCache, Materialised, UsedBound
from tiergate.sidecar.decisions.decision_log import DecisionLog
from tiergate.sidecar.decisions.policy_io import account_document, expiry_epoch, period_for, window_for
from tiergate.sidecar.decisions.records import DecisionRecords, Key, Pending
from tiergate.sidecar.decisions.shadow import ShadowPolicy
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.replica.store import AccountRow, ReplicaMeta, ReplicaReader
from tiergate.sidecar.usage.ledger import UsageLedger

log = host_safe_logger("tiergate.sidecar")  # also runs inside a host app (LocalDecisions)

# The policy's declaration of what a decision reads of input.usage ("feature": its own counter).
USAGE_SCOPE_PATH = "data.tiergate.entitlements.usage_scope"
# Most answers waiting to be re-decided after feed batches dropped them, or after a snapshot or a
# policy reload dropped them all (the warm start: the most recently decided first).
REMATERIALISE_MAX = 10_000
# The background re-decisions' share of the event loop's time: after each slice of work they
# sleep so that live requests keep at least the rest (ADR 41).
REMATERIALISE_CPU_SHARE = 0.25
REMATERIALISE_SLICE_S = 0.005
# A decision's log line, in this order.
LOGGED_FIELDS = (
    "decision_id",
    "tenant",
    "feature",
    "quantity",
    "allow",
    "reason",
    "tier",
    "policy_revision",
    "data_as_of",
    "stale",
)


class PolicyInput(NamedTuple):
    """A policy input document and the replica row it was built from (None: no account)."""

    document: dict[str, Any]
    row: AccountRow | None


class Fresh(NamedTuple):
    """A decision evaluated now, how far it holds as usage grows (None: until any change), and
    the input it was evaluated from."""

    answer: PolicyAnswer
    bound: UsedBound | None
    given: PolicyInput


class DecisionService:
    """Answers (tenant, feature, quantity) from the local replica; never raises for a policy fault.

    Built from a replica reader, an engine and the usage ledger (no aiohttp app needed): it
    learns of replica changes from the reader and of pending usage from the ledger, and drops
    the cached answers they affect.
    """

    def __init__(
        self,
        reader: ReplicaReader,
        engine: PolicyEngine,
        metrics: SidecarMetrics,
        *,
        cache: DecisionCache,
        ledger: UsageLedger,
        log_sample: float = 0.01,
        log_denies: bool = True,
        staleness_budget_s: float | None = None,
        not_ready: Literal["deny", "unavailable"] | None = None,
        since_contact: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.engine = engine
        self.metrics = metrics
        self.counts = metrics.decisions
        self.cache = cache
        self.ledger = ledger
        self.log_sample = log_sample
        self.log_denies = log_denies
        self.staleness_budget_s = staleness_budget_s
        # Following a daemon: before the first snapshot there is no data to answer from, so a
        # paying tenant must not be told "free" (a `replica_not_ready` deny, or a 503).
        self.not_ready = not_ready
        # The follower's monotonic age of its last daemon answer plus the lag the daemon reported.
        self.since_contact = since_contact
        self.clock = clock
        self.decision_log = DecisionLog()
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._now_second = -1
        self._now_text = ""
        self._generation = reader.meta.generation
        self._as_of_epoch: float | None = None
        self._as_of_text: str | None = None
        self._license: dict[str, Any] | None = None
        self._license_issued_epoch = 0.0
        self._tail_key: tuple[str, str | None, bool] | None = None
        self._tail = b""
        self.shadow: ShadowPolicy | None = None  # TIERGATE_SHADOW_POLICIES: compared, never answering
        self.records: DecisionRecords | None = None  # recent decisions with their input (explain)
        # The live bundle's catalog: a metric with its own `window` is decided on that window's
        # counter, and the window is the input's period (docs/adr/0047); credit prices.
        self.catalog: Callable[[], Catalog | None] = lambda: None
        self._to_rematerialise: collections.deque[tuple[str, str, int]] = collections.deque()
        self._rematerialiser: asyncio.Task[None] | None = None
        self._adopt(reader.meta)
        reader.subscribe(self._replica_changed)
        self._usage_scope: tuple[str | None, str | None] = (None, None)  # (scope, of this revision)
        self._prices: CreditPrices | None = None
        ledger.subscribe_usage(self._usage_changed)  # pending usage changes its tenant's answers

    def replica_age(self, now: float | None = None) -> float | None:
        """Following a daemon: seconds since the last answer from it, on the monotonic clock (a
        wall clock set back, or skewed between hosts, neither hides an outage nor invents one).
        Otherwise (static mode, or no contact yet in this process): since `data_as_of`."""
        as_of = self._as_of_epoch
        if as_of is None:
            return None
        since_contact = self.since_contact() if self.since_contact is not None else None
        if since_contact is not None:
            return since_contact
        return max(0.0, (self.clock() if now is None else now) - as_of)

    def is_stale(self, age: float | None = None) -> bool:
        if self.staleness_budget_s is None:
            return False
        age = self.replica_age() if age is None else age
        return age is None or age > self.staleness_budget_s

    def _replica_changed(self, meta: ReplicaMeta, tenants: set[str] | None) -> None:
        """The reader saw a change: a new generation (an import, a snapshot) or `tenants` None
        replaces every answer; a feed batch drops its tenants' answers."""
        if self.records is not None:
            for tenant in [None] if tenants is None else tenants:
                self.records.forget(tenant)
        if tenants is None or meta.generation != self._generation:
            self._generation = meta.generation
            self.rewarm()
            if self.records is not None:
                self.records.forget(None)
        else:
            keys = [(t, *key) for t in tenants for key in self.cache.invalidate(t)]
            if keys:
                self.rematerialise_soon(keys)
        self._adopt(meta)

    def _usage_changed(self, tenant: str, code: str | None) -> None:
        """Pending usage of `tenant`'s counter `code` (None: any) changed: drop every answer of the
        tenant, or only those about `code` when the policy declares that a decision reads its own
        feature's counter alone (`usage_scope := "feature"`, learned for the live revision)."""
        if self.records is not None:
            self.records.forget(tenant)
        scope, revision = self._usage_scope
        prices = self.credit_prices()
        if code is not None and prices is not None and prices.priced(code):
            self.cache.invalidate(tenant)  # the balance every credit-priced feature reads moved
        elif code is not None and scope == "feature" and revision == self.engine.revision:
            self.cache.invalidate_feature(tenant, code, keep_bounded=True)
        else:
            self.cache.invalidate(tenant)

    async def learn_usage_scope(self) -> None:
        """Read the live policy's `usage_scope` once per revision (callers that change usage ask
        first; until then, and for a policy without it, a change drops all the tenant's answers)."""
        revision = self.engine.revision
        if revision is None or self._usage_scope[1] == revision:
            return
        try:  # the revision is taken before: a reload meanwhile leaves a mismatch (all dropped)
            scope = await self.engine.evaluate(USAGE_SCOPE_PATH, {})
        except TierError:
            scope = None  # undefined: the policy may read any counter
        self._usage_scope = (scope if isinstance(scope, str) else None, revision)

    def rematerialise_soon(self, keys: list[tuple[str, str, int]]) -> None:
        """Re-decide (tenant, feature, quantity) answers in the background, so the tenant's next
        check is a hit again: those a feed batch dropped, and the one a reservation just changed
        (at most REMATERIALISE_MAX waiting; more are left to their checks). Each is a full policy
        evaluation on the data of the moment, stored only if nothing changed the tenant meanwhile
        (the cache's epoch), so it is exactly what the next check would have computed."""
        room = REMATERIALISE_MAX - len(self._to_rematerialise)
        self._to_rematerialise.extend(keys[: max(0, room)])
        if self._rematerialiser is None or self._rematerialiser.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): their next checks will do it
                self._to_rematerialise.clear()
                return
            self._rematerialiser = loop.create_task(self._rematerialise(), name="rematerialise")

    def rewarm(self) -> None:
        """Drop every answer (a snapshot, an import, a policy reload) and re-decide in the
        background the REMATERIALISE_MAX most recently decided, newest first: the first minute
        after the change is not all misses."""
        keys = self.cache.keys_newest_first(REMATERIALISE_MAX)
        self.cache.clear()
        self._to_rematerialise.clear()  # of the old data: those still asked are among `keys`
        self.rematerialise_soon(keys)

    async def wait_rematerialised(self) -> None:
        """Wait until the background re-decisions queued so far are done (tests, benchmarks)."""
        while self._rematerialiser is not None and not self._rematerialiser.done():
            await asyncio.shield(self._rematerialiser)

    async def _rematerialise(self) -> None:
        spent = 0.0
        while self._to_rematerialise:
            await asyncio.sleep(0)  # requests first: one evaluation between them at a time
            if spent >= REMATERIALISE_SLICE_S:  # then a pause: at most the share of the loop's time
                await asyncio.sleep(spent * (1 - REMATERIALISE_CPU_SHARE) / REMATERIALISE_CPU_SHARE)
                spent = 0.0
            if not self._to_rematerialise:
                break
            started = time.perf_counter()
            await self._rematerialise_one(*self._to_rematerialise.popleft())
            spent += time.perf_counter() - started

    async def _rematerialise_one(self, tenant: str, feature: str, quantity: int) -> None:
        if self.ledger.in_flight(tenant) or self.cache.holds(tenant, feature, quantity):
            return
        now = self.clock()
        age = self.replica_age(now)
        epoch = self.cache.epoch
        answer, bound, _ = await self._decide_fresh(tenant, feature, quantity, now, age)
        if answer.reason != "policy_error":
            self.cache.put(
                tenant,
                feature,
                quantity,
                Materialised.of(answer, bound),
                now=now,
                valid_until=expiry_epoch(answer.valid_until),
                stale=self.is_stale(age),
                epoch=epoch,
            )
            self.counts.rematerialised += 1

    def _adopt(self, meta: ReplicaMeta) -> None:
        self._as_of_epoch = meta.data_as_of.timestamp() if meta.data_as_of else None
        self._as_of_text = rfc3339(meta.data_as_of)
        self._license = meta.license
        issued_at = meta.license.get("issued_at") if meta.license else None
        self._license_issued_epoch = datetime.fromisoformat(issued_at).timestamp() if issued_at else 0.0

    def _license_of(self, tenant: str, now: float) -> tuple[dict[str, Any] | None, float]:
        """The license the tenant's account comes from (None: none), and the time to decide at:
        a clock behind the license's issue time is not believed (it would only reopen past usage
        periods), so the license's tenant is decided as at the issue time at the earliest."""
        license = self._license
        if license is None or license.get("tenant") != tenant:
            return None, now
        return license, max(now, self._license_issued_epoch)

    async def decide(self, tenant: str, feature: str, quantity: int = 1) -> Decision:
        """One decision as an object (batches, entitlements, authz, reserve)."""
        started = time.perf_counter()
        if self.not_ready is not None and self._as_of_epoch is None:
            return self._not_ready(tenant, feature, quantity, started)
        stale, answer, fresh, given = await self._materialised(tenant, feature, quantity)
        decision = Decision.of(
            fresh or answer.answer(),
            tenant=tenant,
            feature=feature,
            quantity=quantity,
            decision_id=self._next_id(),
            policy_revision=self.engine.revision or "",
            data_as_of=self._as_of_text,
            stale=stale,
        )
        self.counts.count(answer.reason, answer.allow, time.perf_counter() - started)
        if self._logged(answer.allow):
            self._log(decision)
        if self.records is not None and self.records.wants(answer.allow):
            key = (tenant, feature, quantity)
            await self._record(decision.decision_id, decision, key, answer.allow, answer.head, given)
        return decision

    async def decide_json(self, tenant: str, feature: str, quantity: int = 1) -> bytes:
        """One decision rendered as the JSON object `decide` would render to (GET and POST
        /v1/check): the materialised answer's bytes plus the lineage, with no object built."""
        started = time.perf_counter()
        if self.not_ready is not None and self._as_of_epoch is None:
            return orjson.dumps(self._not_ready(tenant, feature, quantity, started))
        stale, answer, _, given = await self._materialised(tenant, feature, quantity)
        decision_id = self._next_id()
        body = b"".join(
            (
                answer.head,
                b',"tenant":',
                orjson.dumps(tenant),
                b',"feature":',
                orjson.dumps(feature),
                b',"quantity":',
                str(quantity).encode(),
                b',"decision_id":"',
                decision_id.encode(),
                self._lineage_tail(stale),
            )
        )
        self.counts.count(answer.reason, answer.allow, time.perf_counter() - started)
        if self._logged(answer.allow):
            self._log_rendered(body)
        if self.records is not None and self.records.wants(answer.allow):
            key = (tenant, feature, quantity)
            await self._record(decision_id, body, key, answer.allow, answer.head, given)
        return body

    async def _materialised(
        self, tenant: str, feature: str, quantity: int
    ) -> tuple[bool, Materialised, PolicyAnswer | None, PolicyInput | None]:
        """(stale, the answer, the PolicyAnswer and its input when it was evaluated now): from the
        cache, else freshly decided and kept."""
        now = self.clock()
        age = self.replica_age(now)
        stale = self.is_stale(age)
        # Pending usage invalidates its tenant when it changes (read-your-writes); while a delivery
        # of the tenant's usage awaits its answer, the overlay may have to wait: decide fresh.
        cacheable = not self.ledger.in_flight(tenant)
        found = self.cache.get(tenant, feature, quantity, now, stale) if cacheable else None
        if found is not None and found.bound is not None:
            found = await self._within_bound(tenant, feature, quantity, found, found.bound)
        if found is not None:
            self.counts.hits += 1
            return stale, found, None, None
        self.counts.misses += 1
        epoch = self.cache.epoch
        fresh, bound, given = await self._decide_fresh(tenant, feature, quantity, now, age)
        answer = Materialised.of(fresh, bound)
        if cacheable and fresh.reason != "policy_error":
            self.cache.put(
                tenant,
                feature,
                quantity,
                answer,
                now=now,
                valid_until=expiry_epoch(fresh.valid_until),
                stale=stale,
                epoch=epoch,
            )
        return stale, answer, fresh, given

    async def _within_bound(
        self, tenant: str, feature: str, quantity: int, found: Materialised, bound: UsedBound
    ) -> Materialised | None:
        """A bounded answer rendered for the counter's value now, or None (and forgotten) once
        the counter has left its range."""
        usage = await self.ledger.usage(self.reader, tenant, bound.period_start)
        used = policy_units(usage.get(feature, 0))
        if not bound.used_min <= used <= bound.used_max:
            self.cache.drop(tenant, feature, quantity)
            return None
        return found.with_used(used)

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _lineage_tail(self, stale: bool) -> bytes:
        """`","policy_revision":...,"data_as_of":...,"stale":...}`: the same for every decision
        until a reload, a replica change or a change of staleness, so rendered once for each."""
        key = (self.engine.revision or "", self._as_of_text, stale)
        if key != self._tail_key:
            revision, as_of, _ = key
            self._tail_key = key
            lineage = {"policy_revision": revision, "data_as_of": as_of, "stale": stale}
            self._tail = b'",' + orjson.dumps(lineage)[1:]
        return self._tail

    def _logged(self, allow: bool) -> bool:
        return (allow is False and self.log_denies) or (
            self.log_sample > 0 and random.random() < self.log_sample
        )

    def _not_ready(self, tenant: str, feature: str, quantity: int, started: float) -> Decision:
        if self.not_ready == "unavailable":
            raise ReplicaNotReadyError(
                "no replica yet: waiting for the first snapshot from the sync daemon (see /readyz)"
            )
        answer = PolicyAnswer(allow=False, reason="replica_not_ready", tier=None)
        decision = Decision.of(
            answer,
            tenant=tenant,
            feature=feature,
            quantity=quantity,
            decision_id=self._next_id(),
            policy_revision=self.engine.revision or "",
            data_as_of=None,
            stale=True,
        )
        self.counts.count(decision.reason, decision.allow, time.perf_counter() - started)
        if self._logged(decision.allow):
            self._log(decision)
        return decision

    async def _decide_fresh(
        self, tenant: str, feature: str, quantity: int, now: float, age: float | None
    ) -> Fresh:
        """Replica lookups plus pending usage (the ledger's read), then the policy."""
        given = await self._input(tenant, feature, quantity, now, age)
        answer, used = await self._evaluate(given.document, given.row.tier if given.row else None)
        if self.shadow is not None:
            await self.shadow.observe(given.document, answer)
        return Fresh(answer, self._bound(used, answer, given.document["period"]["start"]), given)

    def _bound(
        self, used: tuple[int, int] | None, answer: PolicyAnswer, period_start: str
    ) -> UsedBound | None:
        """Kept only while the live policy reads no counter but the feature's own (`usage_scope`)."""
        scope, revision = self._usage_scope
        if used is None or scope != "feature" or revision != self.engine.revision:
            return None
        return UsedBound(*used, answer.limit, period_start)

    async def _input(
        self, tenant: str, feature: str, quantity: int, now: float, age: float | None
    ) -> PolicyInput:
        license, now = self._license_of(tenant, now)
        now_text = self._now_rfc3339(now)
        row = self.reader.account(tenant)
        at = datetime.fromtimestamp(now, UTC)
        period = window_for(self.catalog(), feature, at) or period_for(row, at, now_text)
        usage = await self.ledger.usage(self.reader, tenant, period[0])
        overrides = self.reader.overrides(tenant)
        document = build_input(
            tenant=tenant,
            feature=feature,
            quantity=quantity,
            now_text=now_text,
            account=account_document(row),
            usage=usage,
            period=period,
            replica_age_s=age,
            overrides=overrides,
            license=license,
            credits=self._credits(tenant, feature, quantity, row, period, overrides, now),
        )
        return PolicyInput(document, row)

    def _credits(
        self,
        tenant: str,
        feature: str,
        quantity: int,
        row: AccountRow | None,
        period: tuple[str, str],
        overrides: dict[str, Any],
        now: float,
    ) -> dict[str, Any] | None:
        """`input.credits` when the catalog prices the feature in credits (see credits_input)."""
        prices = self.credit_prices()
        if prices is None:
            return None
        found = overrides.get(feature)
        override = override_quota(found.get("value")) if isinstance(found, dict) else None
        return credits_input(
            prices,
            feature=feature,
            quantity=quantity,
            account_tier=row.tier if row is not None else None,
            states=self.reader.credits(tenant),
            pending=self.ledger.pending_in_all_periods(tenant),
            override_value=override,
            now=datetime.fromtimestamp(now, UTC),
            period_end=period[1],
        )

    def credit_prices(self) -> CreditPrices | None:
        """The live catalog's credit prices (None: it sells no credits), indexed once per catalog."""
        catalog = self.catalog()
        if catalog is None or not catalog.credits:
            return None
        if self._prices is None or self._prices.catalog is not catalog:
            self._prices = CreditPrices(catalog)
        return self._prices

    async def credit_balances(self, tenant: str) -> dict[str, dict[str, Any]]:
        """The tenant's credit balances as checks count them now (pending usage and holds taken)."""
        prices = self.credit_prices()
        states = self.reader.credits(tenant)
        if prices is None or not states:
            return {}
        moment = datetime.fromtimestamp(self.clock(), UTC)
        row = self.reader.account(tenant)
        period = period_for(row, moment, self._now_rfc3339(self.clock()))
        await self.ledger.usage(self.reader, tenant, period[0])  # settles what the replica includes
        return balances(
            prices,
            account_tier=row.tier if row is not None else None,
            states=states,
            pending=self.ledger.pending_in_all_periods(tenant),
            now=moment,
        )

    async def _record(
        self,
        decision_id: str,
        decision: Decision | bytes,
        key: Key,
        allow: bool,
        answer: bytes,
        given: PolicyInput | None,
    ) -> None:
        """Keep the decision (the object, or its rendered JSON) with its input: the one it was
        evaluated from, or for an answer from the cache the input that produced it (rebuilt now
        when no longer kept). Only references are kept: the record's JSON is made on read."""
        records = self.records
        assert records is not None
        recalled = records.recall(key, answer) if given is None else None
        if recalled is None:
            if given is None:
                now = self.clock()
                given = await self._input(*key, now, self.replica_age(now))
            version = given.row.version if given.row else None
            recalled = records.remember(key, answer, given.document, version), version
        input_raw, version = recalled
        at = self._now_rfc3339(self.clock())
        pending = Pending(decision, allow, at, self.reader.meta.position, version, input_raw)
        records.keep_pending(decision_id, pending)

    async def _evaluate(
        self, document: dict[str, Any], tier: str | None
    ) -> tuple[PolicyAnswer, tuple[int, int] | None]:
        """The answer, and the range of `used` it holds for (`used_floor`..`used_bound`)."""
        try:
            raw = await self.engine.evaluate(DECISION_PATH, document)
            return parse_answer(raw), used_range(raw)
        except (TierError, PolicyAnswerError) as exc:
            kind = getattr(exc, "code", "bad_answer")
            self.metrics.engine_errors.labels(kind).inc()
            log.error("policy_evaluation_failed", kind=kind, error=str(exc), tenant=document["tenant"])
            return policy_error_decision(tier), None

    def _now_rfc3339(self, now: float) -> str:
        second = int(now)
        if second != self._now_second:
            self._now_second = second
            self._now_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._now_text

    def _log(self, decision: Decision) -> None:
        self.decision_log.line({name: getattr(decision, name) for name in LOGGED_FIELDS})

    def _log_rendered(self, body: bytes) -> None:
        """The same line from a rendered decision, without building the object."""
        fields = orjson.loads(body)
        self.decision_log.line({name: fields[name] for name in LOGGED_FIELDS})


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
