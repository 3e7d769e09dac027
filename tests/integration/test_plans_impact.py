"""`tiergate plans diff --impact`: a candidate catalog and policy against the sidecar tests' tenants."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner

from tests.integration.sidecar.conftest import ACCOUNTS, USAGE, write_replica
from tiergate.catalog import load_catalog
from tiergate.catalog_diff import price_changes
from tiergate.cli import main
from tiergate.models import PolicyAnswer
from tiergate.periods import rfc3339, window_bounds
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
        "cost_changed": 0,
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
        ((True, "ok", None), (False, "insufficient_credits", None), "over_limit"),
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


CREDIT_PLANS = ROOT / "tests" / "integration" / "credits" / "plans.yaml"


def _credit_replica(path: Path) -> None:
    """Tenants of the credits catalog: two on pro, one free with credits, one free without."""
    from tests.integration.sidecar.conftest import PERIOD

    accounts = [
        {"tenant": "pro-rich", "tier": "pro", "status": "active", **PERIOD},
        {"tenant": "pro-poor", "tier": "pro", "status": "active", **PERIOD},
        {"tenant": "pro-ended", "tier": "pro", "status": "canceled", **PERIOD},
    ]
    write_replica(path, accounts, [])
    balances = {"pro-rich": "100", "pro-poor": "1.5", "free-rich": "100"}
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO credits (tenant, credit_type, body) VALUES (?, 'ai_credits', ?)",
            [
                (
                    tenant,
                    json.dumps(
                        {
                            "tenant": tenant,
                            "credit_type": "ai_credits",
                            "debt": 0,
                            "grants": [{"remaining": amount, "effective_at": "2020-01-01T00:00:00Z"}],
                        }
                    ),
                )
                for tenant, amount in balances.items()
            ],
        )


def _credit_candidate(tmp_path: Path, change: Any) -> Path:
    plans = yaml.safe_load(CREDIT_PLANS.read_text(encoding="utf-8"))
    change(plans)
    path = tmp_path / "candidate.yaml"
    path.write_text(yaml.safe_dump(plans), encoding="utf-8")
    return path


def _credit_report(tmp_path: Path, candidate: Path, *extra: str) -> Any:
    return run(
        str(candidate),
        "--current",
        str(CREDIT_PLANS),
        "--current-policies",
        str(ROOT / "policies"),
        "--impact",
        "--replica",
        str(tmp_path / "replica.db"),
        "--workers",
        "1",
        *extra,
    )


def test_a_changed_credit_cost_counts_who_pays_more_and_who_can_no_longer_afford_it(tmp_path: Path) -> None:
    _credit_replica(tmp_path / "replica.db")

    def pricier_images(plans: dict[str, Any]) -> None:
        plans["tiers"]["pro"]["features"]["images"] = {"credits": {"ai_credits": 2}}  # was 1

    report = json.loads(_credit_report(tmp_path, _credit_candidate(tmp_path, pricier_images), "--json"))
    images = report["features"]["images"]
    # pro-rich pays 2 instead of 1; pro-poor (1.5 credits) could afford 1, not 2.
    assert images["examples"] == {"cost_changed": ["pro-rich"], "over_limit": ["pro-poor"]}
    assert (images["cost_changed"], images["over_limit"], images["lose"]) == (1, 1, 0)
    # The free tier's price did not move: free-rich and the canceled account are not counted.
    assert report["features"]["gpt4_tokens"]["cost_changed"] == 0
    assert report["credits"] == {}  # no plan grant changed


def test_a_changed_plan_grant_counts_the_tenants_it_reaches(tmp_path: Path) -> None:
    _credit_replica(tmp_path / "replica.db")

    def bigger_grant(plans: dict[str, Any]) -> None:
        plans["tiers"]["pro"]["grants"][0]["amount"] = 2000

    candidate = _credit_candidate(tmp_path, bigger_grant)
    report = json.loads(_credit_report(tmp_path, candidate, "--json"))
    # The live pro accounts; a canceled one is granted as the default tier, which grants nothing.
    assert report["credits"] == {
        "ai_credits": {"grant_changed": 2, "examples": {"grant_changed": ["pro-poor", "pro-rich"]}}
    }
    assert all(f["cost_changed"] == 0 for f in report["features"].values())
    table = _credit_report(tmp_path, candidate)
    assert "credits ai_credits: plan grants change for 2 tenants" in table
    assert "ai_credits, plan grants changed: pro-poor, pro-rich" in table
    gated = CliRunner().invoke(
        main,
        [
            "plans",
            "diff",
            str(candidate),
            "--current",
            str(CREDIT_PLANS),
            "--current-policies",
            str(ROOT / "policies"),
            "--impact",
            "--replica",
            str(tmp_path / "replica.db"),
            "--workers",
            "1",
            "--fail-on",
            "grant-changed",
        ],
    )
    assert gated.exit_code == 3 and "grant-changed: 2" in gated.output


def test_a_default_tier_grant_reaches_every_tenant_on_it(tmp_path: Path) -> None:
    _credit_replica(tmp_path / "replica.db")

    def free_grant(plans: dict[str, Any]) -> None:
        plans["tiers"]["free"]["grants"] = [{"credits": "ai_credits", "amount": 10, "every": "month"}]

    report = json.loads(_credit_report(tmp_path, _credit_candidate(tmp_path, free_grant), "--json"))
    assert report["credits"]["ai_credits"]["examples"]["grant_changed"] == ["free-rich", "pro-ended"]


@pytest.mark.parametrize(
    ("current", "candidate", "change"),
    [
        ({"type": "ai_credits", "cost": 1}, {"type": "ai_credits", "cost": 2}, "cost_changed"),
        ({"type": "ai_credits", "cost": 1}, {"type": "gems", "cost": 1}, "cost_changed"),
        (None, {"type": "ai_credits", "cost": "0.5"}, "cost_changed"),
        ({"type": "ai_credits", "cost": "0.5"}, {"type": "ai_credits", "cost": "0.5"}, None),
    ],
)
def test_classify_a_credit_price(
    current: dict[str, Any] | None, candidate: dict[str, Any] | None, change: str | None
) -> None:
    def answer(credits: dict[str, Any] | None) -> PolicyAnswer:
        return PolicyAnswer(allow=True, reason="ok", tier="pro", credits=credits)

    assert classify(answer(current), answer(candidate)) == change


def test_a_windowed_metric_is_counted_in_its_window(tmp_path: Path) -> None:
    """`images` counted per UTC day: a lower limit reaches the tenant by today's count (3), not
    by its billing period's counter (none: a windowed metric counts under its window's start)."""
    from tests.integration.sidecar.conftest import PERIOD

    now = datetime.now(UTC)
    today = rfc3339(window_bounds(now, "day", ZoneInfo("UTC"))[0])
    yesterday = rfc3339(window_bounds(now - timedelta(days=1), "day", ZoneInfo("UTC"))[0])
    usage = [
        {"tenant": "busy-today", "code": "images", "period_start": today, "value": 3},
        {"tenant": "busy-yesterday", "code": "images", "period_start": yesterday, "value": 3},
    ]
    accounts = [{"tenant": "idle", "tier": "free", "status": "active", **PERIOD}]
    write_replica(tmp_path / "replica.db", accounts, usage)
    with sqlite3.connect(tmp_path / "replica.db") as conn:  # enough credits for an image each
        conn.executemany(
            "INSERT INTO credits (tenant, credit_type, body) VALUES (?, 'ai_credits', ?)",
            [
                (
                    t,
                    json.dumps(
                        {
                            "tenant": t,
                            "credit_type": "ai_credits",
                            "grants": [{"remaining": 100, "effective_at": "2020-01-01T00:00:00Z"}],
                        }
                    ),
                )
                for t in ("busy-today", "busy-yesterday", "idle")
            ],
        )
    windowed = yaml.safe_load(CREDIT_PLANS.read_text(encoding="utf-8"))
    windowed["metrics"]["images"]["window"] = "day"
    current = tmp_path / "current.yaml"
    current.write_text(yaml.safe_dump(windowed), encoding="utf-8")
    windowed["tiers"]["free"]["features"]["images"]["limit"] = 2  # was 5 a day
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(windowed), encoding="utf-8")
    report = json.loads(
        run(
            str(candidate),
            "--current",
            str(current),
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
    images = report["features"]["images"]
    assert images["examples"] == {"over_limit": ["busy-today"], "limit_changed": ["busy-yesterday", "idle"]}
