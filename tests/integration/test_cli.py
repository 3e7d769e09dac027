"""The `tiergate` CLI: plans check, replica import/export, and start-up setting errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tiergate.cli import main

ROOT = Path(__file__).parents[2]

DOCUMENT: dict[str, Any] = {
    "accounts": [
        {
            "tenant": "acme",
            "tier": "pro",
            "status": "active",
            "quantity": 5,
            "current_period_start": "2026-11-01T00:00:00Z",
            "current_period_end": "2026-12-01T00:00:00Z",
            "trial_end": None,
            "cancel_at_period_end": False,
            "past_due_since": None,
        },
        {
            "tenant": "globex",
            "tier": "starter",
            "status": "trialing",
            "trial_end": "2026-12-01T00:00:00Z",
        },
    ],
    "usage": [
        {
            "tenant": "acme",
            "code": "api_calls",
            "period_start": "2026-11-01T00:00:00Z",
            "value": 1234,
        }
    ],
}


@pytest.fixture
def replica_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state" / "replica.db"
    monkeypatch.setenv("TIERGATE_REPLICA_PATH", str(path))
    return path


def test_plans_check_accepts_the_sample() -> None:
    result = CliRunner().invoke(main, ["plans", "check", str(ROOT / "plans" / "plans.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok (4 tiers" in result.output


def test_plans_check_lists_each_problem_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "plans.yaml"
    bad.write_text("default_tier: gold\ntiers:\n  free: {rank: 0, features: {sso: 3}}\n")
    result = CliRunner().invoke(main, ["plans", "check", str(bad)])
    assert result.exit_code == 1
    assert "tiers.free.features.sso: a feature is true, false" in result.output


def test_plans_check_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plans", "check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read catalog" in result.output


def test_import_then_export_round_trips(tmp_path: Path, replica_env: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(DOCUMENT))
    imported = CliRunner().invoke(main, ["replica", "import", str(source)])
    assert imported.exit_code == 0, imported.output
    assert "imported 2 accounts and 1 usage counters" in imported.output
    exported = CliRunner().invoke(main, ["replica", "export", "-"])
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.output)
    acme = next(a for a in document["accounts"] if a["tenant"] == "acme")
    assert acme == DOCUMENT["accounts"][0]
    assert document["usage"] == DOCUMENT["usage"]


def test_exact_counters_round_trip_through_export_and_import(tmp_path: Path, replica_env: Path) -> None:
    """A decimal counter (a string), one below zero (an early correction) and a gauge survive a backup."""
    counters = [
        {"tenant": "acme", "code": "seats", "period_start": "9999-12-31T00:00:00Z", "value": 7},
        {"tenant": "acme", "code": "storage_gb", "period_start": "2026-11-01T00:00:00Z", "value": "0.3"},
        {"tenant": "globex", "code": "storage_gb", "period_start": "2026-11-01T00:00:00Z", "value": "-2.5"},
    ]
    source = tmp_path / "in.json"
    source.write_text(json.dumps({**DOCUMENT, "usage": counters}))
    assert CliRunner().invoke(main, ["replica", "import", str(source)]).exit_code == 0
    exported = CliRunner().invoke(main, ["replica", "export", "-"])
    assert exported.exit_code == 0, exported.output
    assert sorted(json.loads(exported.output)["usage"], key=lambda c: (c["tenant"], c["code"])) == counters


def test_import_replaces_everything(tmp_path: Path, replica_env: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(DOCUMENT))
    second.write_text(json.dumps({"accounts": [DOCUMENT["accounts"][1]]}))
    CliRunner().invoke(main, ["replica", "import", str(first)])
    CliRunner().invoke(main, ["replica", "import", str(second)])
    document = json.loads(CliRunner().invoke(main, ["replica", "export"]).output)
    assert [a["tenant"] for a in document["accounts"]] == ["globex"]
    assert document["usage"] == []


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("{not json", "is not JSON"),
        (
            json.dumps({"accounts": [{"tenant": "x", "tier": "pro", "status": "sleeping"}]}),
            "accounts[0].status",
        ),
        (
            json.dumps(
                {
                    "accounts": [
                        {
                            "tenant": "x",
                            "tier": "pro",
                            "status": "active",
                            "trial_end": "2026-01-01",
                        }
                    ]
                }
            ),
            "accounts[0].trial_end",
        ),
        (
            json.dumps({"accounts": [DOCUMENT["accounts"][1], DOCUMENT["accounts"][1]]}),
            "tenants listed twice",
        ),
        (
            json.dumps(
                {
                    "accounts": [],
                    "usage": [
                        {
                            "tenant": "x",
                            "code": "c",
                            "period_start": "2026-11-01T00:00:00Z",
                            "value": "lots",  # a counter may be below zero (an early correction), never not a number
                        }
                    ],
                }
            ),
            "usage[0].value",
        ),
    ],
)
def test_bad_import_names_the_problem_and_changes_nothing(
    tmp_path: Path, replica_env: Path, document: str, fragment: str
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(DOCUMENT))
    CliRunner().invoke(main, ["replica", "import", str(good)])
    bad = tmp_path / "bad.json"
    bad.write_text(document)
    result = CliRunner().invoke(main, ["replica", "import", str(bad)])
    assert result.exit_code == 1
    assert fragment in result.output
    exported = json.loads(CliRunner().invoke(main, ["replica", "export"]).output)
    assert len(exported["accounts"]) == 2


def test_bad_setting_names_the_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERGATE_SIDECAR_PORT", "ninety")
    result = CliRunner().invoke(main, ["replica", "export"])
    assert result.exit_code == 2
    assert "TIERGATE_SIDECAR_PORT='ninety'" in result.output
