"""`tiergate plans diff --impact`: a candidate catalog and/or policies against every tenant of a replica.

Each tenant's decision for every feature is computed twice, with the live bundle and with the
candidate, from the same input document the sidecar would build (`policy_io`), at one instant:
a credit-priced feature with `input.credits` priced by each bundle's own catalog, on the replica's
balances, and a windowed metric on its window's counter. Besides answers, it counts the tenants whose credit price of a feature moves and those
whose plan grants of a credit type (`grants:` of the tier that grants them) change.
Identical documents are evaluated once per bundle (the tenant id is left out of the memo key
unless a policy reads `input.tenant`), and the tenants are split over worker processes.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from tiergate.amounts import Amount, from_stored
from tiergate.catalog import Catalog
from tiergate.catalog_diff import price_changes
from tiergate.errors import ReplicaError, TierError
from tiergate.feed import FeedCredits
from tiergate.models import ENDED_STATUSES, PolicyAnswer
from tiergate.periods import rfc3339
from tiergate.policy.credits_input import CreditPrices, credits_input, override_quota
from tiergate.policy.document import PolicyAnswerError, build_input, parse_answer, policy_error_decision
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH, PolicyBundle
from tiergate.sidecar.decisions.impact_report import Change, FeatureImpact, ImpactReport
from tiergate.sidecar.decisions.policy_io import account_document, period_for
from tiergate.sidecar.replica.store import SELECT_ACCOUNTS, AccountRow, credits_by_tenant, every_override

CHUNK = 2_000  # tenants per worker task


@dataclass(frozen=True)
class TenantState:
    tenant: str
    account: AccountRow | None
    usage: Mapping[str, Mapping[str, Amount]]  # period_start -> code -> value
    overrides: Mapping[str, Any]  # feature -> {value, expires_at}, as the policy reads them
    credits: Mapping[str, FeedCredits] = field(default_factory=dict)  # credit type -> balance


# A deny a tenant could lift by using less or buying credits: over a limit, or short of credits.
OVER = ("limit_exceeded", "insufficient_credits")


def classify(current: PolicyAnswer, candidate: PolicyAnswer) -> Change | None:
    """How a tenant's answer for one feature changes; None when it does not (for this report)."""
    if current.allow and not candidate.allow:
        return "over_limit" if candidate.reason in OVER else "lose"
    if candidate.allow and not current.allow:
        return "gain"
    if current.allow and current.limit != candidate.limit:
        return "limit_changed"
    if credit_price(current) != credit_price(candidate):
        return "cost_changed"
    return None


def credit_price(answer: PolicyAnswer) -> tuple[str, str] | None:
    """(credit type, cost of the quantity) a credit-priced answer names; None otherwise."""
    found = answer.credits
    return (str(found.get("type")), str(found.get("cost"))) if found else None


def granting_tier(catalog: Catalog, row: AccountRow | None) -> str:
    """The tier whose `grants:` a tenant receives: its subscribed one while live, else the default
    (as the daemon's cycles decide, tiergate/sync_daemon/credits/plan_grants.py)."""
    live = row is not None and row.status not in ENDED_STATUSES and row.tier in catalog.tiers
    return row.tier if live and row is not None else catalog.default_tier


def grant_schedules(catalog: Catalog, tier: str) -> dict[str, list[dict[str, Any]]]:
    """The tier's plan grants by credit type, comparable between catalogs."""
    found: dict[str, list[dict[str, Any]]] = {}
    for grant in catalog.tiers[tier].grants if tier in catalog.tiers else ():
        found.setdefault(grant.credits, []).append(grant.model_dump(mode="json"))
    return found


Schedules = Mapping[str, Mapping[str, list[dict[str, Any]]]]  # tier -> credit type -> its grants


def every_schedule(catalog: Catalog) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {tier: grant_schedules(catalog, tier) for tier in catalog.tiers}


def grants_moved(
    current: tuple[Catalog, Schedules], candidate: tuple[Catalog, Schedules], row: AccountRow | None
) -> list[str]:
    """The credit types whose plan grants to this tenant differ between the catalogs (each with
    its `every_schedule`)."""
    before = current[1].get(granting_tier(current[0], row), {})
    after = candidate[1].get(granting_tier(candidate[0], row), {})
    if before == after:
        return []
    return sorted(kind for kind in set(before) | set(after) if before.get(kind) != after.get(kind))


def read_tenants(replica: Path) -> list[TenantState]:
    """Every tenant with an account, a usage counter, an override or credits, read once through a
    read-only connection."""
    if not replica.is_file():
        raise ReplicaError(f"replica {replica} does not exist (TIERGATE_REPLICA_PATH or --replica)")
    conn = sqlite3.connect(f"file:{replica}?mode=ro", uri=True)
    try:
        accounts = {row[0]: AccountRow(*row) for row in conn.execute(SELECT_ACCOUNTS)}
        usage: dict[str, dict[str, dict[str, Amount]]] = {}
        for tenant, code, period_start, value in conn.execute(
            "SELECT tenant, code, period_start, value FROM usage"
        ):
            usage.setdefault(tenant, {}).setdefault(period_start, {})[code] = from_stored(value)
        overrides = every_override(conn)
        credits = credits_by_tenant(conn)
    except sqlite3.Error as exc:
        raise ReplicaError(f"cannot read replica {replica}: {exc}") from exc
    finally:
        conn.close()
    names = sorted(set(accounts) | set(usage) | set(overrides) | set(credits))
    return [
        TenantState(t, accounts.get(t), usage.get(t, {}), overrides.get(t, {}), credits.get(t, {}))
        for t in names
    ]


def run_impact(
    replica: Path, current: PolicyBundle, candidate: PolicyBundle, *, workers: int | None = None
) -> ImpactReport:
    started = time.perf_counter()
    now = rfc3339(datetime.now(UTC).replace(microsecond=0)) or ""
    tenants = read_tenants(replica)
    features = sorted(current.catalog.features | candidate.catalog.features)
    chunks = [tenants[i : i + CHUNK] for i in range(0, len(tenants), CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    results: list[tuple[tuple[dict[str, FeatureImpact], dict[str, FeatureImpact]], float]]
    if workers == 1:
        _init_worker(current, candidate, features, now)
        try:
            results = [_impact_of(chunk) for chunk in chunks]
        finally:
            _drop_worker()
    else:
        context = multiprocessing.get_context("spawn")  # regorus objects never cross a fork
        pool = ProcessPoolExecutor(workers, context, _init_worker, (current, candidate, features, now))
        with pool:
            results = list(pool.map(_impact_of, chunks))
    merged = {name: FeatureImpact() for name in features}
    grants: dict[str, FeatureImpact] = {}
    cpu_seconds = 0.0
    for (result, moved), cpu in results:
        cpu_seconds += cpu
        for name, impact in result.items():
            merged[name].merge(impact)
        for kind, impact in moved.items():
            grants.setdefault(kind, FeatureImpact()).merge(impact)
    per_tier = Counter(t.account.tier for t in tenants if t.account is not None)
    return ImpactReport(
        tenants=len(tenants),
        now=now,
        current_revision=current.revision,
        candidate_revision=candidate.revision,
        features=merged,
        grants=grants,
        prices=price_changes(current.catalog, candidate.catalog, per_tier),
        seconds=time.perf_counter() - started,
        cpu_seconds=cpu_seconds,
    )


MEMO_ENTRIES = 500_000  # per bundle and worker: ~100 MB at most


class _Evaluator:
    """One bundle on the embedded engine, with a memo of the inputs it has answered."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self.engine = EmbeddedEngine(compiled=True, required=(DECISION_PATH,))
        asyncio.run(self.engine.load(bundle))
        self.catalog = bundle.catalog
        self.schedules = (bundle.catalog, every_schedule(bundle.catalog))
        self.prices = CreditPrices(bundle.catalog) if bundle.catalog.credits else None
        # Without a policy reading the tenant id, two tenants with equal inputs get equal answers.
        self.per_tenant = any("input.tenant" in source for source in bundle.modules.values())
        self.memo: dict[tuple[Any, ...], PolicyAnswer] = {}

    def decide(
        self,
        key: tuple[Any, ...],
        document: Callable[[CreditPrices | None], dict[str, Any]],
        tier: str | None,
    ) -> PolicyAnswer:
        answer = self.memo.get(key)
        if answer is None:
            if len(self.memo) >= MEMO_ENTRIES:
                self.memo.clear()
            answer = self.memo[key] = self._evaluate(document(self.prices), tier)
        return answer

    def _evaluate(self, document: dict[str, Any], tier: str | None) -> PolicyAnswer:
        try:
            raw = _run(self.engine.evaluate(DECISION_PATH, document))
            if isinstance(raw, dict) and isinstance(raw.get("valid_until"), str):
                raw = {**raw, "valid_until": None}  # not reported; parsing it costs 15 % of a run
            return parse_answer(raw)
        except (TierError, PolicyAnswerError):
            return policy_error_decision(tier)


_STATE: tuple[_Evaluator, _Evaluator, Sequence[str], str] | None = None


def _run(coroutine: Any) -> Any:
    """The engine's `evaluate` finishes without awaiting anything: step it once, no loop needed."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the embedded engine awaited during an evaluation")


def _init_worker(current: PolicyBundle, candidate: PolicyBundle, features: Sequence[str], now: str) -> None:
    global _STATE
    _STATE = (_Evaluator(current), _Evaluator(candidate), features, now)


def _drop_worker() -> None:
    """Release the engines here, on the thread that made them (regorus objects are bound to it)."""
    global _STATE
    _STATE = None


def _impact_of(
    tenants: Sequence[TenantState],
) -> tuple[tuple[dict[str, FeatureImpact], dict[str, FeatureImpact]], float]:
    """The chunk's changes by feature and the plan grants moved by credit type, and the CPU
    seconds this worker spent on them."""
    assert _STATE is not None, "worker not initialised"
    cpu = time.process_time()
    live, trial, features, now_text = _STATE
    now = datetime.fromisoformat(now_text)
    impacts = {name: FeatureImpact() for name in features}
    grants: dict[str, FeatureImpact] = {}
    for state in tenants:
        row = state.account
        period = period_for(row, now, now_text)
        usage = state.usage.get(period[0], {})
        # The memo key holds exactly what build_input reads (the account's decision fields).
        overridden = json.dumps(state.overrides, sort_keys=True) if state.overrides else ""
        balances = tuple(sorted((kind, *c.at(now)[1:]) for kind, c in state.credits.items()))
        tenant = _Tenant(
            state,
            account_document(row),
            row.tier if row else None,
            period,
            usage,
            tuple(sorted(usage.items())),
            (row[1:9] if row else None, overridden, balances),
        )
        for feature in features:
            before = _decide(live, tenant, feature, now, now_text)
            after = _decide(trial, tenant, feature, now, now_text)
            change = classify(before, after)
            if change is not None:
                impacts[feature].add(change, state.tenant)
        for kind in grants_moved(live.schedules, trial.schedules, row):
            grants.setdefault(kind, FeatureImpact()).add("grant_changed", state.tenant)
    return (impacts, grants), time.process_time() - cpu


@dataclass(frozen=True)
class _Tenant:
    """One tenant's parts of every input, computed once for all its features."""

    state: TenantState
    account: dict[str, Any] | None
    tier: str | None
    period: tuple[str, str]  # the billing period
    usage: Mapping[str, Amount]  # its counters
    usage_key: tuple[Any, ...]
    fields: tuple[Any, ...]  # the rest of the memo key: account fields, overrides, balances


def _decide(ev: _Evaluator, tenant: _Tenant, feature: str, now: datetime, now_text: str) -> PolicyAnswer:
    """The bundle's answer; a metric with a window of its own in that bundle's catalog is decided
    on the window's counter (ADR 47), as a sidecar does."""
    period, usage, usage_key = tenant.period, tenant.usage, tenant.usage_key
    window = ev.catalog.usage_window(feature, now)
    if window is not None:
        period = (rfc3339(window[0]) or "", rfc3339(window[1]) or "")
        usage = tenant.state.usage.get(period[0], {})
        usage_key = tuple(sorted(usage.items()))
    document = partial(
        _document, tenant.state, feature, now, now_text, account=tenant.account, usage=usage, period=period
    )
    key = (feature, period, usage_key, *tenant.fields)
    return ev.decide((tenant.state.tenant, *key) if ev.per_tenant else key, document, tenant.tier)


def _document(
    state: TenantState,
    feature: str,
    now: datetime,
    now_text: str,
    prices: CreditPrices | None,
    *,
    account: dict[str, Any] | None,
    usage: Mapping[str, Amount],
    period: tuple[str, str],
) -> dict[str, Any]:
    """The input a sidecar builds, `input.credits` priced by the bundle's catalog (`prices`)."""
    found = state.overrides.get(feature)
    credits = (
        credits_input(
            prices,
            feature=feature,
            quantity=1,
            account_tier=state.account.tier if state.account else None,
            states=state.credits,
            pending={},
            override_value=override_quota(found.get("value")) if isinstance(found, dict) else None,
            now=now,
            period_end=period[1],
        )
        if prices is not None
        else None
    )
    return build_input(
        tenant=state.tenant,
        feature=feature,
        quantity=1,
        now_text=now_text,
        account=account,
        usage=usage,
        period=period,
        replica_age_s=0.0,
        overrides=state.overrides,
        credits=credits,
    )
