"""Shadow policies: a candidate bundle evaluated beside the live one, counted, never answering.

With `TIERGATE_SHADOW_POLICIES` set, a sample of the decisions the sidecar computes (cache misses:
the ones that evaluate the live policy) is evaluated again on the candidate with the very same
input document; where the two differ in `allow` or `reason`, `tiergate_shadow_disagreements_total`
counts it by feature and both reasons (and a `shadow_disagreement` line is logged). The caller's
answer is the live one, always: a failing candidate only counts as an error.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from tiergate.errors import TierError
from tiergate.log import host_safe_logger
from tiergate.models import REASONS, PolicyAnswer
from tiergate.sidecar.decisions.policy_io import PolicyAnswerError, parse_answer
from tiergate.sidecar.policy.engine import DECISION_PATH, PolicyEngine

log = host_safe_logger("tiergate.shadow")  # also runs inside a host app (LocalDecisions)

OTHER = "other"  # label for a feature outside both catalogs or a reason outside the vocabulary


class ShadowPolicy:
    def __init__(
        self,
        engine: PolicyEngine,
        registry: CollectorRegistry,
        *,
        sample: float,
        features: Callable[[], set[str]],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.sample = sample
        self.features = features  # the live and candidate catalogs' features (bounded labels)
        self.rng = rng
        self.evaluations = Counter(
            "tiergate_shadow_evaluations",
            "Sampled decisions evaluated on the shadow policies, by outcome (agree, disagree, error).",
            ["outcome"],
            registry=registry,
        )
        self.disagreements = Counter(
            "tiergate_shadow_disagreements",
            "Sampled decisions where the shadow policies answer differently (allow or reason).",
            ["feature", "live_reason", "shadow_reason"],
            registry=registry,
        )

    async def observe(self, document: Mapping[str, Any], live: PolicyAnswer) -> None:
        """Compare on a sample; never raises (the live answer is already decided)."""
        if self.sample <= 0 or self.rng() >= self.sample or self.engine.revision is None:
            return
        try:
            shadow = parse_answer(await self.engine.evaluate(DECISION_PATH, document))
        except (TierError, PolicyAnswerError) as exc:
            self.evaluations.labels("error").inc()
            log.warning("shadow_evaluation_failed", error=str(exc))
            return
        if (shadow.allow, shadow.reason) == (live.allow, live.reason):
            self.evaluations.labels("agree").inc()
            return
        self.evaluations.labels("disagree").inc()
        feature = str(document.get("feature"))
        self.disagreements.labels(
            feature if feature in self.features() else OTHER, _reason(live.reason), _reason(shadow.reason)
        ).inc()
        log.info(
            "shadow_disagreement",
            tenant=document.get("tenant"),
            feature=feature,
            live_allow=live.allow,
            live_reason=live.reason,
            shadow_allow=shadow.allow,
            shadow_reason=shadow.reason,
            shadow_revision=self.engine.revision,
        )


def _reason(reason: str) -> str:
    return reason if reason in REASONS else OTHER
