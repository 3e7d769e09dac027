"""The policy-engine port: load a policy bundle, evaluate a rule path against an input document."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tiergate.catalog import Catalog
from tiergate.errors import TierError
from tiergate.policy.document import explain_rule

DECISION_PATH = "data.tiergate.entitlements.decision"
# Which rule decided, for explanations only (evaluated on a recorded input; a policy may lack it).
DECIDED_BY_PATH = "data.tiergate.entitlements.decided_by"
ROUTE_PATH = "data.tiergate.ingress.route"


@dataclass(frozen=True)
class PolicyBundle:
    """Everything an engine needs: Rego modules (file name -> source) and the catalog (`data.plans`)."""

    modules: Mapping[str, str]
    catalog: Catalog
    revision: str
    sources: tuple[str, ...] = field(default_factory=tuple)

    @functools.cached_property
    def plans(self) -> Mapping[str, Any]:
        """The catalog as the policies see it under `data.plans`."""
        return self.catalog.policy_data()


class PolicyEngine(Protocol):
    """Adapters: EmbeddedEngine (regorus, in process) and OpaServerEngine (a real OPA server).

    `load` swaps the bundle atomically: on failure it raises PolicyError and keeps the previous
    one. `evaluate` returns the document at `path` (e.g. DECISION_PATH) or raises PolicyError
    (undefined document, evaluation error) / EngineUnavailableError (no engine reachable).
    """

    @property
    def revision(self) -> str | None: ...

    async def load(self, bundle: PolicyBundle) -> None: ...

    async def evaluate(self, path: str, document: Mapping[str, Any]) -> Any: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


async def rule_that_decided(
    engine: PolicyEngine, document: Mapping[str, Any], decision: Mapping[str, Any]
) -> dict[str, Any]:
    """Which rule decided `decision`, asked of the policy's `decided_by` on its input (see
    tiergate.policy.document.explain_rule); a policy without one is said so, not an error."""
    revision = engine.revision
    try:
        found = await engine.evaluate(DECIDED_BY_PATH, document)
    except TierError as exc:
        said = {"rule": None, "text": f"the policy does not say which rule decided ({exc.message})"}
        return {**said, "policy_revision": revision}
    return {**explain_rule(found, decision, document), "policy_revision": revision}
