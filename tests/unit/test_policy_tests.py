"""The Rego unit-test runner (tiergate.sidecar.policy.rego_tests) on both engines, with policies in temp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.sidecar.policy.rego_tests import (
    ENGINES,
    EngineName,
    PolicyTestReport,
    RuleResult,
    discover_test_rules,
    render_report,
    run_policy_tests,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"

PASSING_AND_FAILING = """\
package demo.checks

import rego.v1

double(x) := x * 2

test_double_passes if double(2) == 4

test_double_fails if double(2) == 5
"""


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path


def by_rule(report: PolicyTestReport) -> dict[str, RuleResult]:
    return {result.rule: result for result in report.results}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> EngineName:
    name: EngineName = request.param
    return name


def test_the_project_policies_pass(engine: EngineName) -> None:
    report = run_policy_tests(POLICIES, engine)
    text, code = render_report(report)
    assert code == 0, text
    assert report.passed >= 30
    assert any(r.rule.startswith("data.tiergate.entitlements_test.test_") for r in report.results)
    assert any(r.rule.startswith("data.tiergate.ingress_test.test_") for r in report.results)


def test_a_failing_test_is_counted(tmp_path: Path, engine: EngineName) -> None:
    write(tmp_path, "checks.rego", PASSING_AND_FAILING)
    report = run_policy_tests(tmp_path, engine)
    results = by_rule(report)
    assert results["data.demo.checks.test_double_passes"].passed
    failing = results["data.demo.checks.test_double_fails"]
    assert not failing.passed
    assert "undefined" in failing.message
    text, code = render_report(report)
    assert code == 1
    assert "PASS data.demo.checks.test_double_passes" in text.splitlines()
    assert text.splitlines()[-1] == "1 passed, 1 failed"


def test_only_true_passes(tmp_path: Path, engine: EngineName) -> None:
    write(tmp_path, "value.rego", "package v\n\nimport rego.v1\n\ntest_three := 3\n")
    (result,) = run_policy_tests(tmp_path, engine).results
    assert not result.passed
    assert result.message == "evaluated to 3, not true"


def test_an_evaluation_error_fails_the_test(tmp_path: Path, engine: EngineName) -> None:
    # Two values for one complete rule is an error on both engines (not silently undefined).
    source = "package e\n\nimport rego.v1\n\ntest_conflict := x if some x in [true, false]\n"
    write(tmp_path, "err.rego", source)
    (result,) = run_policy_tests(tmp_path, engine).results
    assert not result.passed
    assert result.message.startswith("error: ")
    assert "\n" not in result.message


def test_a_syntax_error_is_exit_code_2(tmp_path: Path, engine: EngineName) -> None:
    write(tmp_path, "good.rego", PASSING_AND_FAILING)
    write(tmp_path, "broken.rego", "package broken\n\nimport rego.v1\n\nallow if {\n")
    report = run_policy_tests(tmp_path, engine)
    text, code = render_report(report)
    assert code == 2
    assert report.results == ()
    assert "broken.rego" in text
    assert text.splitlines()[0].startswith("ERROR ")
    assert text.splitlines()[-1] == "0 passed, 0 failed"


def test_a_compile_error_is_exit_code_2(tmp_path: Path, engine: EngineName) -> None:
    write(tmp_path, "unsafe.rego", "package u\n\nimport rego.v1\n\ntest_unsafe if y == 1\n")
    text, code = render_report(run_policy_tests(tmp_path, engine))
    assert code == 2
    assert "unsafe" in text


def test_no_tests_is_a_failure(tmp_path: Path, engine: EngineName) -> None:
    write(tmp_path, "policy.rego", "package p\n\nimport rego.v1\n\nallow := true\n")
    text, code = render_report(run_policy_tests(tmp_path, engine))
    assert code == 1
    assert "no test_ rules found" in text
    assert text.splitlines()[-1] == "0 passed, 0 failed"


def test_an_empty_directory_is_a_failure(tmp_path: Path, engine: EngineName) -> None:
    text, code = render_report(run_policy_tests(tmp_path, engine))
    assert code == 1
    assert "no .rego files" in text


def test_policies_in_subdirectories_and_shared_packages(tmp_path: Path, engine: EngineName) -> None:
    write(tmp_path, "a/policy.rego", "package shared\n\nimport rego.v1\n\nanswer := 42\n")
    write(tmp_path, "b/policy_test.rego", "package shared\n\nimport rego.v1\n\ntest_answer if answer == 42\n")
    report = run_policy_tests(tmp_path, engine)
    assert [r.rule for r in report.results] == ["data.shared.test_answer"]
    assert report.passed == 1


def test_plans_become_data_plans(tmp_path: Path, engine: EngineName) -> None:
    source = 'package p\n\nimport rego.v1\n\ntest_default if data.plans.default_tier == "free"\n'
    write(tmp_path, "p_test.rego", source)
    assert run_policy_tests(tmp_path, engine).failed == 1
    assert run_policy_tests(tmp_path, engine, plans={"default_tier": "free"}).passed == 1


def test_discovery_takes_complete_rules_named_test_only() -> None:
    source = """\
package x.y

import rego.v1

default test_defaulted := false

test_defaulted if true

test_split if input.a

test_split if input.b

test_function(n) if n > 0

test_members contains 1

helper_test_not_a_test := true

nested.test_inner := true
"""
    rules, errors = discover_test_rules({"x.rego": source})
    assert errors == []
    assert rules == ["data.x.y.test_defaulted", "data.x.y.test_split"]


def test_render_report_lists_every_rule() -> None:
    report = PolicyTestReport(
        engine="embedded",
        directory=Path("policies"),
        results=(RuleResult("data.p.test_a", True), RuleResult("data.p.test_b", False, "undefined")),
    )
    assert render_report(report) == (
        "PASS data.p.test_a\nFAIL data.p.test_b: undefined\n1 passed, 1 failed",
        1,
    )
