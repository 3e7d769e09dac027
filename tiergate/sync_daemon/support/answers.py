"""What a sidecar would answer for a tenant now, computed in the daemon from the mirror.

The daemon loads the same Rego policies and catalog read-only on the embedded engine and builds
the same input document (tiergate.policy.document) from the mirror's account, counters, overrides
and credit balances: a windowed metric (`window:`, ADR 47) is decided on its window's counter, a
credit-priced feature with `input.credits` (tiergate.policy.credits_input) as a sidecar builds it.
The mirror holds all usage it has ingested and knows no sidecar's unshipped usage or holds, so
those count as none. It is used by support's reads only: no decision path goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tiergate.amounts import Amount
from tiergate.catalog import Catalog
from tiergate.errors import TierError
from tiergate.feed import FeedCredits
from tiergate.models import Account, PolicyAnswer
from tiergate.periods import rfc3339, usage_period
from tiergate.policy.bundle import load_bundle
from tiergate.policy.credits_input import CreditPrices, credits_input, override_quota
from tiergate.policy.document import (
    PolicyAnswerError,
    build_input,
    feature_sources,
    parse_answer,
    policy_account,
    policy_error_decision,
)
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH, PolicyBundle
from tiergate.sync_daemon.mirror.lookup import TenantRecord
from tiergate.usage_events import GAUGE_PERIOD_START

log = structlog.get_logger("tiergate.support")


@dataclass(frozen=True)
class TenantInput:
    """The parts of a policy input that do not depend on the feature asked about."""

    tenant: str
    now: datetime
    now_text: str
    account: dict[str, Any] | None
    counters: Mapping[str, Mapping[str, Amount]]  # period_start -> code -> value
    period: tuple[str, str]  # the billing period
    overrides: dict[str, dict[str, Any]]
    credits: Mapping[str, FeedCredits]  # credit type -> the mirror's balance

    def period_of(self, catalog: Catalog | None, feature: str) -> tuple[str, str]:
        """The feature's own window holding now (`window:` in the catalog), else the billing period."""
        window = catalog.usage_window(feature, self.now) if catalog is not None else None
        return (rfc3339(window[0]) or "", rfc3339(window[1]) or "") if window else self.period

    def usage(self, period_start: str) -> dict[str, Amount]:
        return {**self.counters.get(GAUGE_PERIOD_START, {}), **self.counters.get(period_start, {})}

    def document(
        self,
        feature: str,
        quantity: int = 1,
        catalog: Catalog | None = None,
        prices: CreditPrices | None = None,
    ) -> dict[str, Any]:
        """The input a sidecar builds: the feature's window, and input.credits when it is priced."""
        period = self.period_of(catalog, feature)
        return build_input(
            tenant=self.tenant,
            feature=feature,
            quantity=quantity,
            now_text=self.now_text,
            account=self.account,
            usage=self.usage(period[0]),
            period=period,
            replica_age_s=0.0,
            overrides=self.overrides,
            credits=self.credits_of(prices, feature, quantity, period) if prices is not None else None,
        )

    def credits_of(
        self, prices: CreditPrices, feature: str, quantity: int, period: tuple[str, str]
    ) -> dict[str, Any] | None:
        found = self.overrides.get(feature)
        return credits_input(
            prices,
            feature=feature,
            quantity=quantity,
            account_tier=self.account["tier"] if self.account else None,
            states=self.credits,
            pending={},
            override_value=override_quota(found.get("value")) if found else None,
            now=self.now,
            period_end=period[1],
        )


def tenant_input(record: TenantRecord, now: datetime) -> TenantInput:
    """The sidecar's input from the mirror's rows (`now` in UTC, whole seconds)."""
    feed = record.account.feed() if record.account is not None else None
    account = Account.model_validate(feed) if feed is not None else None
    start, end = usage_period(account, now)
    overrides = {
        o.feature: {"value": o.feed()["value"], "expires_at": o.feed()["expires_at"]}
        for o in record.overrides
    }
    return TenantInput(
        tenant=record.tenant,
        now=now,
        now_text=rfc3339(now) or "",
        account=policy_account(feed),
        counters=record.counters,
        period=(rfc3339(start) or "", rfc3339(end) or ""),
        overrides=overrides,
        credits={b.credit_type: FeedCredits.model_validate(b.feed(record.tenant)) for b in record.credits},
    )


class PolicyAnswers:
    """The live policies on the embedded engine, for support's reads (load once, at start)."""

    def __init__(self, policies: Path, plans: Path) -> None:
        self.policies = policies
        self.plans = plans
        self.engine = EmbeddedEngine(compiled=True, required=(DECISION_PATH,))
        self.bundle: PolicyBundle | None = None
        self.prices: CreditPrices | None = None
        self.error: str | None = None

    async def load(self) -> None:
        """Load the bundle; a failure is kept (and shown in answers), never fatal to the daemon."""
        try:
            bundle = load_bundle(self.policies, self.plans)
            await self.engine.load(bundle)
        except TierError as exc:
            self.error = exc.message
            log.warning("support_policies_unavailable", policies=str(self.policies), error=exc.message)
            return
        self.bundle, self.error = bundle, None
        self.prices = CreditPrices(bundle.catalog) if bundle.catalog.credits else None

    async def close(self) -> None:
        await self.engine.close()

    @property
    def revision(self) -> str | None:
        return self.bundle.revision if self.bundle is not None else None

    async def decide(self, facts: TenantInput, feature: str, quantity: int = 1) -> PolicyAnswer:
        tier = facts.account["tier"] if facts.account else None
        catalog = self.bundle.catalog if self.bundle is not None else None
        document = facts.document(feature, quantity, catalog, self.prices)
        try:
            return parse_answer(await self.engine.evaluate(DECISION_PATH, document))
        except (TierError, PolicyAnswerError):
            return policy_error_decision(tier)

    async def entitlements(self, record: TenantRecord, now: datetime | None = None) -> dict[str, Any]:
        """Every catalog feature as a sidecar would answer it now, with where its value comes from."""
        if self.bundle is None:
            return {"policy_revision": None, "error": self.error, "features": {}}
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        facts = tenant_input(record, moment)
        addon_features = {name: set(addon.features) for name, addon in self.bundle.catalog.addons.items()}
        addons = facts.account["addons"] if facts.account else {}
        sources = feature_sources(facts.overrides, addons, addon_features, facts.now_text)
        features = {}
        for feature in sorted(self.bundle.catalog.features):
            answer = await self.decide(facts, feature)
            window = self.bundle.catalog.usage_window(feature, moment)
            features[feature] = {
                **answer_body(answer),
                "source": sources.get(feature, "plan"),
                # A windowed metric's own window (its `used` is that window's counter); else null.
                "window": {"start": rfc3339(window[0]), "end": rfc3339(window[1])} if window else None,
            }
        return {
            "policy_revision": self.bundle.revision,
            "error": None,
            "now": facts.now_text,
            "period": {"start": facts.period[0], "end": facts.period[1]},
            "features": features,
        }


def answer_body(answer: PolicyAnswer) -> dict[str, Any]:
    return {
        "allow": answer.allow,
        "reason": answer.reason,
        "tier": answer.tier,
        "paid_tier": answer.paid_tier,
        "limit": answer.limit,
        "used": answer.used,
        "remaining": answer.remaining,
        "valid_until": answer.valid_until,
        "credits": answer.credits,  # a credit-priced feature: {type, balance, cost}
    }
