"""regorus (VM and interpreter) and the OPA Go library answer the shipped policies alike on many
generated inputs, the set bench/engines.py measures (the Rego tests cover the rules one by one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tiergate.policy.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # bench/'s scripts import each other as top-level modules

from engines import disagreements, inputs, opa_go, regorus  # noqa: E402


def test_the_engines_agree_on_every_generated_input() -> None:
    bundle = load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml")
    go = opa_go(bundle)
    if go is None:
        pytest.skip("opa-golib-python-bindings is not installed (make venv installs it)")
    documents = inputs(bundle, 400)
    assert len({(d["account"]["tier"], d["feature"], d["account"]["status"]) for d in documents}) > 50
    engines = {
        "vm": regorus(bundle, compiled=True),
        "interpreter": regorus(bundle, compiled=False),
        "opa": go,
    }
    assert disagreements(engines, documents) == []
    reasons = {engines["vm"](d).get("reason") for d in documents}
    assert {"limit_exceeded", "not_in_plan"} <= reasons, reasons  # the inputs reach denials of both kinds
