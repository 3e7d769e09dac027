"""The PolicyEngine contract, run against every adapter: regorus (interpreter, VM) and OPA (double, binary)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.engine.conftest import PLANS_YAML, TIER_REGO, make_bundle, tier_input
from tiergate.errors import EngineUnavailableError, PolicyError
from tiergate.policy.engine import DECISION_PATH, PolicyEngine

EXTRA_REGO = 'package tiergate.extra\n\nhello := "world"\n'
BROKEN_REGO = "package tiergate.entitlements\n\ndecision := {\n"
UNKNOWN_FUNCTION_REGO = "package tiergate.other\n\nx := no_such_function(1)\n"
FAULTY_REGO = """\
package tiergate.faulty

ratio := 100 / input.divisor

conflict := 1 if input.clash

conflict := 2 if input.clash
"""
FREE_LIMIT_10 = PLANS_YAML.replace("api_calls: {limit: 1000}", "api_calls: {limit: 10}")

DECISIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("ok", {}, {"allow": True, "reason": "ok", "limit": 100000, "used": 1234, "remaining": 98766}),
    ("bool feature", {"feature": "sso"}, {"allow": True, "limit": None, "remaining": None}),
    ("default tier", {"account": {"tier": None}, "feature": "sso"}, {"reason": "not_in_plan"}),
    ("unknown feature", {"feature": "teleport"}, {"allow": False, "reason": "unknown_feature"}),
    ("over limit", {"usage": {"api_calls": 100000}}, {"allow": False, "reason": "limit_exceeded"}),
    ("stale replica", {"replica": {"age_seconds": 900}}, {"reason": "replica_stale"}),
    (
        "trial over",
        {"account": {"status": "trialing", "trial_end": "2026-11-01T00:00:00Z"}},
        {"reason": "trial_expired"},
    ),
    (
        "past due in grace",
        {"account": {"status": "past_due", "past_due_since": "2026-11-22T00:00:00Z"}},
        {"allow": True, "reason": "ok"},
    ),
    (
        "past due too long",
        {"account": {"status": "past_due", "past_due_since": "2026-11-01T00:00:00Z"}},
        {"reason": "payment_overdue"},
    ),
    ("canceled", {"account": {"status": "canceled"}}, {"allow": False, "reason": "subscription_inactive"}),
]


@pytest.mark.parametrize(("case", "overrides", "expected"), DECISIONS, ids=[d[0] for d in DECISIONS])
async def test_evaluates_a_decision(
    engine: PolicyEngine, case: str, overrides: dict[str, Any], expected: dict[str, Any]
) -> None:
    await engine.load(make_bundle())

    decision = await engine.evaluate(DECISION_PATH, _input(overrides))

    assert {key: decision[key] for key in expected} == expected


async def test_load_sets_revision_and_ping_answers(engine: PolicyEngine) -> None:
    bundle = make_bundle()

    await engine.load(bundle)

    assert engine.revision == bundle.revision
    await engine.ping()


@pytest.mark.parametrize("path", ["data.tiergate.entitlements.nothing", "data.nowhere.at_all"])
async def test_undefined_document_is_a_policy_error(engine: PolicyEngine, path: str) -> None:
    await engine.load(make_bundle())

    with pytest.raises(PolicyError, match="undefined"):
        await engine.evaluate(path, tier_input())


async def test_rule_undefined_for_this_input_is_a_policy_error(engine: PolicyEngine) -> None:
    await engine.load(
        make_bundle(
            {"tier.rego": TIER_REGO, "extra.rego": EXTRA_REGO.replace('"world"', '"world" if input.x')}
        )
    )

    with pytest.raises(PolicyError, match="undefined"):
        await engine.evaluate("data.tiergate.extra.hello", {})


@pytest.mark.parametrize("broken", [BROKEN_REGO, UNKNOWN_FUNCTION_REGO], ids=["syntax", "unknown function"])
async def test_broken_module_is_rejected_and_the_previous_bundle_keeps_answering(
    engine: PolicyEngine, broken: str
) -> None:
    good = make_bundle({"tier.rego": TIER_REGO, "extra.rego": EXTRA_REGO})
    await engine.load(good)

    with pytest.raises(PolicyError, match=r"broken\.rego"):
        await engine.load(make_bundle({"tier.rego": TIER_REGO, "broken.rego": broken}))

    assert engine.revision == good.revision
    assert (await engine.evaluate(DECISION_PATH, tier_input()))["allow"] is True
    assert await engine.evaluate("data.tiergate.extra.hello", {}) == "world"


async def test_bundle_without_the_required_package_is_rejected(engine: PolicyEngine) -> None:
    good = make_bundle()
    await engine.load(good)

    with pytest.raises(PolicyError, match=r"tiergate\.entitlements"):
        await engine.load(make_bundle({"extra.rego": EXTRA_REGO}))

    assert engine.revision == good.revision
    assert (await engine.evaluate(DECISION_PATH, tier_input()))["reason"] == "ok"


async def test_new_plans_data_changes_the_answers(engine: PolicyEngine) -> None:
    free_tenant = tier_input(account={"tier": "free"}, usage={"api_calls": 50})
    await engine.load(make_bundle())
    assert (await engine.evaluate(DECISION_PATH, free_tenant))["reason"] == "ok"

    await engine.load(make_bundle(plans_yaml=FREE_LIMIT_10))

    decision = await engine.evaluate(DECISION_PATH, free_tenant)
    assert (decision["reason"], decision["limit"]) == ("limit_exceeded", 10)


async def test_a_module_removed_from_the_bundle_is_gone(engine: PolicyEngine) -> None:
    await engine.load(make_bundle({"tier.rego": TIER_REGO, "extra.rego": EXTRA_REGO}))
    assert await engine.evaluate("data.tiergate.extra.hello", {}) == "world"

    await engine.load(make_bundle())

    with pytest.raises(PolicyError):
        await engine.evaluate("data.tiergate.extra.hello", {})


@pytest.mark.parametrize(
    ("path", "document"),
    [("data.tiergate.faulty.ratio", {"divisor": 0}), ("data.tiergate.faulty.conflict", {"clash": True})],
    ids=["division by zero", "conflicting values"],
)
async def test_evaluation_error_is_a_policy_error_not_a_crash(
    engine: PolicyEngine, path: str, document: dict[str, Any]
) -> None:
    await engine.load(make_bundle({"tier.rego": TIER_REGO, "faulty.rego": FAULTY_REGO}))

    with pytest.raises(PolicyError):
        await engine.evaluate(path, document)

    assert await engine.evaluate("data.tiergate.faulty.ratio", {"divisor": 4}) == 25
    assert (await engine.evaluate(DECISION_PATH, tier_input()))["reason"] == "ok"


async def test_engine_that_cannot_answer_is_unavailable(unavailable_engine: PolicyEngine) -> None:
    with pytest.raises(EngineUnavailableError):
        await unavailable_engine.evaluate(DECISION_PATH, tier_input())
    with pytest.raises(EngineUnavailableError):
        await unavailable_engine.ping()
    assert unavailable_engine.revision is None


def _input(overrides: dict[str, Any]) -> dict[str, Any]:
    overrides = dict(overrides)
    account = overrides.pop("account", {})
    document = tier_input(account=account, **overrides)
    if account.get("tier", "") is None:
        del document["account"]["tier"]
    return document
