"""`tiergate plans diff --impact`: a candidate catalog and policy against the sidecar tests' tenants."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.integration.sidecar.conftest import ACCOUNTS, USAGE, write_replica
from tiergate.catalog import load_catalog
from tiergate.catalog_diff import price_changes
from tiergate.cli import main
from tiergate.models import PolicyAnswer
from tiergate.sidecar.decisions.impact import classify

ROOT = Path(__file__).parents[2]


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    plans = yaml.safe_load((ROOT / "plans" / "plans.yaml").read_text(encoding="utf-8"))
    plans["tiers"]["pro"]["features"]["api_calls"] = {"limit": 50_000}  # pro-active has 99,999
    plans["tiers"]["starter"]["features"]["reports"] = False
    plans["tiers"]["starter"]["features"]["sso"] = True
    plans["tiers"]["pro"]["prices"]["month"]["unit_amount"] = 5900
    path = tmp_path / "candidate.yaml"
    path.write_text(yaml.safe_dump(plans), encoding="utf-8")
    return path


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, ["plans", "diff", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_impact_names_who_gains_loses_and_is_over_a_new_limit(tmp_path: Path, candidate: Path) -> None:
    write_replica(tmp_path / "replica.db", ACCOUNTS, USAGE)
    report = json.loads(
        run(
            str(candidate),
            "--current",
            str(ROOT / "plans" / "plans.yaml"),
            "--current-policies",
            str(ROOT / "policies"),
            "--impact",
            "--replica",
            str(tmp_path / "replica.db"),
            "--workers",
            "1",
            "--json",
        )
    )
    features = report["features"]
    assert features["api_calls"]["over_limit"] == 1
    assert features["api_calls"]["examples"]["over_limit"] == ["pro-active"]
    assert features["reports"]["examples"]["lose"] == ["starter-active"]
    assert features["sso"]["examples"]["gain"] == ["starter-active"]
    # Every other active pro account keeps access but sees the limit change.
    assert features["api_calls"]["limit_changed"] >= 3
    assert features["dashboards"] == {
        "gain": 0,
        "lose": 0,
        "over_limit": 0,
        "limit_changed": 0,
        "examples": {},
    }
    (price,) = report["prices"]
    assert (price["tier"], price["interval"], price["candidate"]["unit_amount"]) == ("pro", "month", 5900)
    assert price["tenants"] == sum(1 for a in ACCOUNTS if a["tier"] == "pro")
    assert report["tenants"] == len({a["tenant"] for a in ACCOUNTS} | {u["tenant"] for u in USAGE})


def test_a_tenants_overrides_count_as_the_sidecar_would_count_them(tmp_path: Path, candidate: Path) -> None:
    """pro-active's override of api_calls keeps it under the candidate's lower limit, and
    starter-active's override already grants sso: neither is reported."""
    replica = tmp_path / "replica.db"
    write_replica(replica, ACCOUNTS, USAGE)
    with sqlite3.connect(replica) as conn:
        conn.executemany(
            "INSERT INTO overrides (tenant, feature, value, expires_at) VALUES (?, ?, ?, NULL)",
            [("pro-active", "api_calls", '{"limit":200000}'), ("starter-active", "sso", "true")],
        )
    report = json.loads(
        run(
            str(candidate),
            "--current",
            str(ROOT / "plans" / "plans.yaml"),
            "--current-policies",
            str(ROOT / "policies"),
            "--impact",
            "--replica",
            str(replica),
            "--workers",
            "1",
            "--json",
        )
    )
    features = report["features"]
    assert features["api_calls"]["over_limit"] == 0
    assert "pro-active" not in features["api_calls"]["examples"].get("limit_changed", [])
    assert features["sso"]["gain"] == 0
    assert features["reports"]["examples"]["lose"] == ["starter-active"]  # no override there


def test_a_candidate_policy_directory_and_the_table(tmp_path: Path) -> None:
    write_replica(tmp_path / "replica.db", ACCOUNTS, USAGE)
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    rego = policies / "entitlements.rego"
    # A stricter candidate: no grace period at all, past_due is overdue at once.
    source = rego.read_text(encoding="utf-8")
    assert "grace_days" in source
    rego.write_text(source.replace("grace_days", "grace_days_unused"), encoding="utf-8")
    plans = str(ROOT / "plans" / "plans.yaml")
    table = run(
        plans,
        "--current",
        plans,
        "--current-policies",
        str(ROOT / "policies"),
        "--policies",
        str(policies),
        "--impact",
        "--replica",
        str(tmp_path / "replica.db"),
        "--workers",
        "1",
    )
    assert "tenants at" in table and "prices: unchanged" in table
    sso = next(line for line in table.splitlines() if line.startswith("sso"))
    assert sso.split()[2] == "1"  # pro-grace loses sso


def test_without_impact_only_prices_are_compared(candidate: Path) -> None:
    out = run(str(candidate), "--current", str(ROOT / "plans" / "plans.yaml"), "--json")
    assert [(p["tier"], p["interval"]) for p in json.loads(out)["prices"]] == [("pro", "month")]


def test_a_missing_replica_is_a_clear_error(tmp_path: Path, candidate: Path) -> None:
    result = CliRunner().invoke(
        main, ["plans", "diff", str(candidate), "--impact", "--replica", str(tmp_path / "none.db")]
    )
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize(
    ("current", "candidate", "change"),
    [
        ((True, "ok", 10), (False, "limit_exceeded", 5), "over_limit"),
        ((True, "ok", None), (False, "not_in_plan", None), "lose"),
        ((False, "not_in_plan", None), (True, "ok", None), "gain"),
        ((True, "ok", 10), (True, "ok", 20), "limit_changed"),
        ((False, "not_in_plan", None), (False, "payment_overdue", None), None),
        ((True, "ok", 10), (True, "ok", 10), None),
    ],
)
def test_classify(
    current: tuple[bool, str, int | None], candidate: tuple[bool, str, int | None], change: str | None
) -> None:
    def answer(allow: bool, reason: str, limit: int | None) -> PolicyAnswer:
        return PolicyAnswer(allow=allow, reason=reason, tier="pro", limit=limit)

    assert classify(answer(*current), answer(*candidate)) == change


def test_price_changes_lists_added_and_removed_prices(candidate: Path) -> None:
    live = load_catalog(ROOT / "plans" / "plans.yaml")
    trial = load_catalog(candidate).model_copy(
        update={"tiers": {k: v for k, v in load_catalog(candidate).tiers.items() if k != "enterprise"}}
    )
    changes = price_changes(live, trial, {"pro": 3})
    assert [(c.tier, c.interval, c.candidate is None) for c in changes] == [
        ("enterprise", "month", True),
        ("enterprise", "year", True),
        ("pro", "month", False),
    ]
