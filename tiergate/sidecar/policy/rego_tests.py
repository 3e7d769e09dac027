"""The Rego unit-test runner: every `test_*` rule under a directory, on regorus or on the real OPA."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# regorus reports errors through Rust's anyhow, which appends a backtrace of dozens of lines when
# RUST_BACKTRACE is set; RUST_LIB_BACKTRACE takes precedence for those and leaves panics alone.
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
os.environ.setdefault("RUST_BACKTRACE", "0")

import regorus  # imported after the environment above: the library reads it once

EngineName = Literal["embedded", "opa-reference"]
ENGINES: tuple[EngineName, ...] = ("embedded", "opa-reference")


@dataclass(frozen=True)
class RuleResult:
    """One test rule's outcome; `message` says why it failed."""

    rule: str  # data.<package>.<test rule>
    passed: bool
    message: str = ""


@dataclass(frozen=True)
class PolicyTestReport:
    engine: EngineName
    directory: Path
    files: tuple[Path, ...] = ()
    results: tuple[RuleResult, ...] = ()
    load_errors: tuple[str, ...] = ()  # parse or compile errors: no test could run

    @property
    def passed(self) -> int:
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


class _LoadError(Exception):
    """A module does not parse or compile; the message is the engine's, location included."""


class _Runner(Protocol):
    def load(self, name: str, source: str) -> None: ...

    def add_plans(self, plans: Mapping[str, Any]) -> None: ...

    def compile(self) -> None: ...

    def run(self, rule: str) -> RuleResult: ...

    def close(self) -> None: ...


def run_policy_tests(
    directory: Path, engine: EngineName, *, plans: Mapping[str, Any] | None = None
) -> PolicyTestReport:
    """Load every *.rego under `directory` (policies and tests) and evaluate each test_ rule.

    `plans`, if given, becomes `data.plans`; tests should still bring their own with `with`.
    """
    files = tuple(sorted(directory.rglob("*.rego")))
    sources = {str(path): path.read_text(encoding="utf-8") for path in files}
    report = PolicyTestReport(engine=engine, directory=directory, files=files)
    try:
        runner = _open_runner(engine)
    except _LoadError as exc:
        return _with_errors(report, [str(exc)])
    try:
        errors = _load_all(runner, sources, plans)
        if errors:
            return _with_errors(report, errors)
        rules, errors = discover_test_rules(sources)
        if errors:
            return _with_errors(report, errors)
        return PolicyTestReport(
            engine=engine,
            directory=directory,
            files=files,
            results=tuple(runner.run(rule) for rule in rules),
        )
    finally:
        runner.close()


def render_report(report: PolicyTestReport) -> tuple[str, int]:
    """The text for a terminal and the exit code: 0 all passed, 1 a failure or no tests, 2 a bad policy."""
    lines: list[str] = []
    for error in report.load_errors:
        lines.append(f"ERROR {error}")
    for result in report.results:
        if result.passed:
            lines.append(f"PASS {result.rule}")
        else:
            lines.append(f"FAIL {result.rule}: {result.message}")
    if not report.load_errors and not report.results:
        found = f"{len(report.files)} .rego files" if report.files else "no .rego files"
        lines.append(f"no test_ rules found under {report.directory} ({found})")
    lines.append(f"{report.passed} passed, {report.failed} failed")
    if report.load_errors:
        code = 2
    elif report.failed or not report.results:
        code = 1
    else:
        code = 0
    return "\n".join(lines), code


def _with_errors(report: PolicyTestReport, errors: list[str]) -> PolicyTestReport:
    return PolicyTestReport(
        engine=report.engine, directory=report.directory, files=report.files, load_errors=tuple(errors)
    )


def _load_all(runner: _Runner, sources: Mapping[str, str], plans: Mapping[str, Any] | None) -> list[str]:
    errors: list[str] = []
    for name, source in sources.items():
        try:
            runner.load(name, source)
        except _LoadError as exc:
            errors.append(str(exc))
    if errors:
        return errors  # compiling would repeat the first parse error
    if plans is not None:
        runner.add_plans(plans)
    try:
        runner.compile()
    except _LoadError as exc:
        return [str(exc)]
    return []


# -- finding the test rules ----------------------------------------------------------------------


def discover_test_rules(sources: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """`data.<package>.test_*` for every complete rule named test_*, in file and source order.

    Names come from regorus' parse tree, not from evaluation results: a failing test is undefined,
    so it would be missing from `data.<package>`. Functions and partial sets are not tests.
    """
    rules: list[str] = []
    errors: list[str] = []
    for name, source in sources.items():
        parser = regorus.Engine()
        try:
            parser.add_policy(name, source)
            modules = json.loads(parser.get_ast_as_json())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic is a BaseException (pyo3 PanicException)
            errors.append(f"{name}: cannot list its test rules: {_engine_message(exc)}")
            continue
        for module in modules:
            package = _package_name(module)
            for rule_name in _test_rule_names(module["ast"]["rules"]):
                path = f"data.{package}.{rule_name}"
                if path not in rules:  # a test may be split over several bodies or modules
                    rules.append(path)
    return rules, errors


def _package_name(module: Mapping[str, Any]) -> str:
    # The package ref's source text ("tiergate.entitlements_test"): simpler than walking RefDot nodes.
    span = module["ast"]["package"]["refr"]
    for node in span.values():
        span = node["span"]
    text: str = module["source"]["contents"]
    return text.encode()[span["start"] : span["end"]].decode()


def _test_rule_names(rules: list[Mapping[str, Any]]) -> Iterator[str]:
    for rule in rules:
        head = rule.get("Spec", {}).get("head", {}).get("Compr")
        if head is None:  # a default value, a function, or a partial set
            continue
        var = head["refr"].get("Var")
        if var is not None and str(var["value"]).startswith("test_"):
            yield str(var["value"])


# -- engines -------------------------------------------------------------------------------------


def _open_runner(engine: EngineName) -> _Runner:
    if engine == "embedded":
        return _RegorusRunner()
    if engine == "opa-reference":
        return _OpaRunner()
    raise _LoadError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")


class _RegorusRunner:
    """The sidecar's embedded engine (Rego v1)."""

    def __init__(self) -> None:
        self._engine = regorus.Engine()

    def load(self, name: str, source: str) -> None:
        try:
            self._engine.add_policy(name, source)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise _LoadError(f"{name}: {_engine_message(exc, full=True)}") from None

    def add_plans(self, plans: Mapping[str, Any]) -> None:
        self._engine.add_data({"plans": dict(plans)})

    def compile(self) -> None:
        # regorus checks every module (unsafe variables, unknown functions) on the first evaluation.
        try:
            self._engine.eval_query("true")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise _LoadError(_engine_message(exc, full=True)) from None

    def run(self, rule: str) -> RuleResult:
        try:
            value = self._engine.eval_rule(rule)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            return RuleResult(rule, False, f"error: {_engine_message(exc)}")
        return _judge(rule, defined=value is not None, value=value)

    def close(self) -> None:
        pass


class _OpaRunner:
    """The real OPA (v1) Go library through opa-golib-python-bindings: a reference to compare with."""

    def __init__(self) -> None:
        try:
            import opa_bindings
        except ImportError as exc:
            raise _LoadError(
                f"the opa-reference engine needs opa-golib-python-bindings ({exc}); "
                "install requirements/opa-reference.txt (make venv)"
            ) from None
        self._errors: tuple[type[BaseException], type[BaseException]] = (
            opa_bindings.OpaError,
            opa_bindings.OpaUndefinedError,
        )
        self._undefined: type[BaseException] = opa_bindings.OpaUndefinedError
        self._engine = opa_bindings.OpaEngine()

    def load(self, name: str, source: str) -> None:
        try:
            self._engine.add_policy(name, source)
        except self._errors as exc:
            raise _LoadError(_engine_message(exc, full=True)) from None

    def add_plans(self, plans: Mapping[str, Any]) -> None:
        self._engine.add_data(dict(plans), "plans")

    def compile(self) -> None:
        # OPA compiles every module together when it prepares the first query.
        try:
            self._engine.eval_query("true")
        except self._errors as exc:
            raise _LoadError(_engine_message(exc, full=True)) from None

    def run(self, rule: str) -> RuleResult:
        try:
            value = self._engine.eval_document(rule.removeprefix("data."))
        except self._undefined:
            return _judge(rule, defined=False, value=None)
        except self._errors as exc:
            return RuleResult(rule, False, f"error: {_engine_message(exc)}")
        return _judge(rule, defined=True, value=value)

    def close(self) -> None:
        self._engine.close()


def _judge(rule: str, *, defined: bool, value: object) -> RuleResult:
    # Like `opa test`: only `true` passes; a failing body leaves the rule undefined.
    if not defined:
        return RuleResult(rule, False, "undefined (a condition in its body did not hold)")
    if value is True:
        return RuleResult(rule, True)
    shown = json.dumps(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return RuleResult(rule, False, f"evaluated to {shown}, not true")


def _engine_message(exc: BaseException, *, full: bool = False) -> str:
    """regorus errors are a code frame (`--> file:line:col`, the line, `error: ...`); OPA's are lines.

    One line ("file:3:16: divide by zero") for a failing test; the whole frame for a load error.
    """
    text = str(exc).split("Stack backtrace:")[0].strip() or type(exc).__name__
    if full:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    where = next((line[4:] for line in lines if line.startswith("--> ")), None)
    what = next((line[7:] for line in lines if line.startswith("error: ")), None)
    if where and what:
        return f"{where}: {what}"
    return " ".join(lines)[:300]
