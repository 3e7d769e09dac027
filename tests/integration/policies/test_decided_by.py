"""`decided_by` (which rule decided, for explanations) answers the same on regorus's interpreter, its
compiled VM and the OPA reference engine, for every row of the decisions table, and names the rule
that matches the decision's reason."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import regorus

from tests.integration.policies.test_decisions_table import DECISIONS, ROOT, document
from tiergate.catalog import load_catalog
from tiergate.policy.bundle import load_bundle
from tiergate.policy.document import explain_rule
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECIDED_BY_PATH, DECISION_PATH, PolicyBundle, rule_that_decided

opa_bindings = pytest.importorskip(
    "opa_bindings", reason="the OPA reference engine is not installed (make venv)"
)

RESTRICTIONS = {"payment_overdue", "trial_expired", "subscription_inactive"}


@pytest.fixture(scope="module")
def engines() -> dict[str, Any]:
    plans = load_catalog(ROOT / "plans" / "plans.yaml").policy_data()
    sources = {name: (ROOT / "policies" / name).read_text() for name in ("entitlements.rego", "ingress.rego")}
    interpreter = regorus.Engine()
    opa = opa_bindings.OpaEngine()
    for name, source in sources.items():
        interpreter.add_policy(name, source)
        opa.add_policy(name, source)
    interpreter.add_data({"plans": plans})
    opa.add_data({"plans": plans})
    vm = EmbeddedEngine(compiled=True)
    asyncio.run(vm.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml")))
    return {"interpreter": interpreter, "opa": opa, "vm": vm}


def evaluate(engines: dict[str, Any], path: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The document at `path` from each engine, by name."""
    engines["interpreter"].set_input(doc)
    return {
        "interpreter": engines["interpreter"].eval_rule(path),
        "vm": asyncio.run(engines["vm"].evaluate(path, doc)),
        "opa": engines["opa"].eval_document(path.removeprefix("data."), doc),
    }


@pytest.mark.parametrize(
    ("acct", "feature", "used", "reason"),
    [pytest.param(row[1], row[2], row[3], row[5], id=row[0]) for row in DECISIONS],
)
def test_the_engines_agree_on_which_rule_decided(
    engines: dict[str, Any], acct: dict[str, Any] | None, feature: str, used: int, reason: str
) -> None:
    doc = document(acct, feature, used)
    found = evaluate(engines, DECIDED_BY_PATH, doc)
    assert found["interpreter"] == found["vm"] == found["opa"], found
    decided = found["opa"]
    decision = evaluate(engines, DECISION_PATH, doc)["opa"]
    assert decided["tier"] == decision["tier"]
    if reason == "unknown_feature":
        assert decided["rule"] == "known_feature"
    elif reason in RESTRICTIONS:
        assert decided["rule"] == "restriction"
    else:
        assert decided["rule"] == ("metered" if decision["limit"] is not None else "tier_value")
    explained = explain_rule(decided, {**decision, "feature": feature}, doc)
    assert (explained["rule"] == decided["rule"] and feature in explained["text"]) or decided[
        "rule"
    ] == "known_feature"


CUSTOM = """package tiergate.entitlements

import rego.v1

decision := {"allow": false, "reason": "not_in_plan", "tier": "free"}
"""


async def test_a_policy_without_decided_by_is_said_so_not_guessed() -> None:
    catalog = load_catalog(ROOT / "plans" / "plans.yaml")
    engine = EmbeddedEngine(compiled=True, required=(DECISION_PATH,))
    await engine.load(PolicyBundle(modules={"custom.rego": CUSTOM}, catalog=catalog, revision="custom-1"))
    said = await rule_that_decided(engine, document(None, "sso", 0), {"feature": "sso"})
    assert said["rule"] is None and said["policy_revision"] == "custom-1"
    assert said["text"].startswith("the policy does not say which rule decided")
    await engine.close()
    assert "does not say" in explain_rule([1], {"feature": "sso"}, {})["text"]  # not an object
