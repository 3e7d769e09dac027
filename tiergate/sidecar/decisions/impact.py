"""`tiergate plans diff --impact`: a candidate catalog and/or policies against every tenant of a replica.

Each tenant's decision for every feature is computed twice, with the live bundle and with the
candidate, from the same input document the sidecar would build (`policy_io`), at one instant.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from tiergate.amounts import Amount, from_stored
from tiergate.catalog_diff import price_changes
from tiergate.errors import ReplicaError, TierError
from tiergate.models import PolicyAnswer
from tiergate.periods import rfc3339
from tiergate.policy.document import PolicyAnswerError, build_input, parse_answer, policy_error_decision
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH, PolicyBundle
from tiergate.sidecar.decisions.impact_report import Change, FeatureImpact, ImpactReport
from tiergate.sidecar.decisions.policy_io import account_document, period_for
from tiergate.sidecar.replica.store import SELECT_ACCOUNTS, AccountRow, every_override

CHUNK = 2_000  # tenants per worker task


@dataclass(frozen=True)
class TenantState:
    tenant: str
    account: AccountRow | None
    usage: Mapping[str, Mapping[str, Amount]]  # period_start -> code -> value
    overrides: Mapping[str, Any]  # feature -> {value, expires_at}, as the policy reads them


def classify(current: PolicyAnswer, candidate: PolicyAnswer) -> Change | None:
    """How a tenant's answer for one feature changes; None when it does not (for this report)."""
    if current.allow and not candidate.allow:
        return "over_limit" if candidate.reason == "limit_exceeded" else "lose"
    if candidate.allow and not current.allow:
        return "gain"
    if current.allow and current.limit != candidate.limit:
        return "limit_changed"
    return None


def read_tenants(replica: Path) -> list[TenantState]:
    """Every tenant with an account, a usage counter or an override, read once through a read-only
    connection."""
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
    except sqlite3.Error as exc:
        raise ReplicaError(f"cannot read replica {replica}: {exc}") from exc
    finally:
        conn.close()
    names = sorted(set(accounts) | set(usage) | set(overrides))
    return [TenantState(t, accounts.get(t), usage.get(t, {}), overrides.get(t, {})) for t in names]


def run_impact(
    replica: Path, current: PolicyBundle, candidate: PolicyBundle, *, workers: int | None = None
) -> ImpactReport:
    started = time.perf_counter()
    now = rfc3339(datetime.now(UTC).replace(microsecond=0)) or ""
    tenants = read_tenants(replica)
    features = sorted(current.catalog.features | candidate.catalog.features)
    chunks = [tenants[i : i + CHUNK] for i in range(0, len(tenants), CHUNK)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    results: list[tuple[dict[str, FeatureImpact], float]]
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
    cpu_seconds = 0.0
    for result, cpu in results:
        cpu_seconds += cpu
        for name, impact in result.items():
            merged[name].merge(impact)
    per_tier = Counter(t.account.tier for t in tenants if t.account is not None)
    return ImpactReport(
        tenants=len(tenants),
        now=now,
        current_revision=current.revision,
        candidate_revision=candidate.revision,
        features=merged,
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
        # Without a policy reading the tenant id, two tenants with equal inputs get equal answers.
        self.per_tenant = any("input.tenant" in source for source in bundle.modules.values())
        self.memo: dict[tuple[Any, ...], PolicyAnswer] = {}

    def decide(
        self, key: tuple[Any, ...], document: Callable[[], dict[str, Any]], tier: str | None
    ) -> PolicyAnswer:
        answer = self.memo.get(key)
        if answer is None:
            if len(self.memo) >= MEMO_ENTRIES:
                self.memo.clear()
            answer = self.memo[key] = self._evaluate(document(), tier)
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


def _impact_of(tenants: Sequence[TenantState]) -> tuple[dict[str, FeatureImpact], float]:
    """The chunk's changes, and the CPU seconds this worker spent on them."""
    assert _STATE is not None, "worker not initialised"
    cpu = time.process_time()
    live, trial, features, now_text = _STATE
    now = datetime.fromisoformat(now_text)
    impacts = {name: FeatureImpact() for name in features}
    for state in tenants:
        row = state.account
        period = period_for(row, now, now_text)
        usage = state.usage.get(period[0], {})
        tier = row.tier if row else None
        # The memo key holds exactly what build_input reads (the account's decision fields).
        overridden = json.dumps(state.overrides, sort_keys=True) if state.overrides else ""
        shared = (row[1:9] if row else None, period, tuple(sorted(usage.items())), overridden)
        account = account_document(row)
        for feature in features:
            document = partial(
                build_input,
                tenant=state.tenant,
                feature=feature,
                quantity=1,
                now_text=now_text,
                account=account,
                usage=usage,
                period=period,
                replica_age_s=0.0,
                overrides=state.overrides,
            )
            key = (feature, *shared)
            before = live.decide((state.tenant, *key) if live.per_tenant else key, document, tier)
            after = trial.decide((state.tenant, *key) if trial.per_tenant else key, document, tier)
            change = classify(before, after)
            if change is not None:
                impacts[feature].add(change, state.tenant)
    return impacts, time.process_time() - cpu
