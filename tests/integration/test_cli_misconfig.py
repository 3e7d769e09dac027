"""The CLI says what it is about to do, and refuses a misconfiguration by naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tiergate.cli import main

DAEMON_ENV = {
    "TIERGATE_STRIPE_API_KEY": "sk_test_cli",
    "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_cli_0123456789",
    "TIERGATE_FEED_TOKEN": "feed-token-for-cli-tests",
}
CATALOG = """
default_tier: free
tiers:
  free: {rank: 0}
  {tier}: {{rank: 1, prices: {{month: {{lookup_key: {tier}_m, unit_amount: 1, currency: usd}}}}}}
"""


@pytest.fixture
def daemon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DAEMON_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """Stands in for Stripe (a recording run_push): the tiers of each catalog pushed."""
    from tiergate.sync_daemon.billing import stripe_catalog
    from tiergate.sync_daemon.billing.push import PushResult

    calls: list[set[str]] = []

    def recording_run_push(settings: Any, catalog: Any, *, dry_run: bool) -> Any:
        calls.append(set(catalog.tiers))
        return [], PushResult(), False

    monkeypatch.setattr(stripe_catalog, "run_push", recording_run_push)
    return calls


def write_catalog(path: Path, tier: str) -> Path:
    path.write_text(CATALOG.replace("{tier}", tier).replace("{{", "{").replace("}}", "}"))
    return path


@pytest.mark.usefixtures("daemon_env")
def test_plans_push_defaults_to_the_catalog_the_daemon_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushed: list[set[str]]
) -> None:
    served = write_catalog(tmp_path / "served.yaml", "gold")
    monkeypatch.setenv("TIERGATE_PLANS", str(served))
    result = CliRunner().invoke(main, ["plans", "push", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert pushed == [{"free", "gold"}]
    assert f"planning catalog {served} (from TIERGATE_PLANS) to https://api.stripe.com" in result.output


@pytest.mark.usefixtures("daemon_env")
def test_plans_push_with_a_path_names_that_file(tmp_path: Path, pushed: list[set[str]]) -> None:
    other = write_catalog(tmp_path / "other.yaml", "silver")
    result = CliRunner().invoke(main, ["plans", "push", str(other)])
    assert result.exit_code == 0, result.output
    assert pushed == [{"free", "silver"}]
    assert f"pushing catalog {other} (from argument)" in result.output


@pytest.mark.parametrize("key", ["pk_test_51Abc", "whsec_123", "mykey123"])
def test_a_key_that_is_not_a_secret_key_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, daemon_env: None, key: str
) -> None:
    monkeypatch.setenv("TIERGATE_STRIPE_API_KEY", key)
    result = CliRunner().invoke(main, ["plans", "push", "--dry-run"])
    assert result.exit_code == 2
    assert "invalid setting TIERGATE_STRIPE_API_KEY=<hidden>: this is " in result.output
    assert "takes a secret key (sk_test_…, sk_live_…) or a restricted key (rk_…)" in result.output
    assert key not in result.output
    assert ("publishable key (pk_)" in result.output) is key.startswith("pk_")


@pytest.mark.parametrize("key", ["sk_test_x", "sk_live_x", "rk_live_x"])
def test_secret_and_restricted_keys_are_accepted(
    monkeypatch: pytest.MonkeyPatch, daemon_env: None, pushed: list[set[str]], key: str
) -> None:
    monkeypatch.setenv("TIERGATE_STRIPE_API_KEY", key)
    result = CliRunner().invoke(main, ["plans", "push", "--dry-run"])
    assert result.exit_code == 0, result.output


def test_an_unknown_variable_is_named_with_the_closest_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERGATE_REPLICA_PATH", str(tmp_path / "replica.db"))
    monkeypatch.setenv("TIERGATE_DEAMON_URL", "http://127.0.0.1:9190")
    monkeypatch.setenv("TIERGATE_STRIPE_API_KEY", "sk_test_x")  # the daemon's: known, not warned
    result = CliRunner().invoke(main, ["replica", "export"])
    assert (
        "warning: TIERGATE_DEAMON_URL is not a tiergate setting and is ignored; "
        "did you mean TIERGATE_DAEMON_URL?"
    ) in result.output
    assert "TIERGATE_STRIPE_API_KEY" not in result.output


def test_a_missing_setting_also_names_the_misspelt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERGATE_STRIPE_WEBHOOK_SECRET", "whsec_test_0123456789")
    monkeypatch.setenv("TIERGATE_FEED_TOKEN", "feed-token-for-tests-0001")
    monkeypatch.setenv("TIERGATE_STRIPE_KEY", "sk_test_x")
    monkeypatch.delenv("TIERGATE_STRIPE_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["sync-daemon"])
    assert result.exit_code == 2
    assert "did you mean TIERGATE_STRIPE_API_KEY?" in result.output
    assert "missing setting TIERGATE_STRIPE_API_KEY" in result.output


# -- replica import / export --------------------------------------------------------------------

ROOT = Path(__file__).parents[2]
ACME = {"tenant": "acme", "tier": "pro", "status": "active"}


@pytest.fixture
def replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state" / "replica.db"
    monkeypatch.setenv("TIERGATE_REPLICA_PATH", str(path))
    monkeypatch.setenv("TIERGATE_PLANS", str(ROOT / "plans" / "plans.yaml"))
    return path


def import_document(tmp_path: Path, document: object, *options: str) -> Any:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(document))
    return CliRunner().invoke(main, ["replica", "import", str(source), *options])


def exported_tenants() -> list[str]:
    result = CliRunner().invoke(main, ["replica", "export"])
    assert result.exit_code == 0, result.output
    return [a["tenant"] for a in json.loads(result.stdout)["accounts"]]


UNKNOWN = {
    "accounts": [
        ACME,
        {"tenant": "t1", "tier": "gold", "status": "active"},
        {"tenant": "t2", "tier": "gold", "status": "active"},
        {"tenant": "t3", "tier": "platinum", "status": "active"},
    ],
    "usage": [{"tenant": "acme", "code": "api_cals", "period_start": "2026-11-01T00:00:00Z", "value": 3}],
}


def test_an_import_with_tiers_and_codes_the_catalog_lacks_is_refused(tmp_path: Path, replica: Path) -> None:
    assert import_document(tmp_path, {"accounts": [ACME]}).exit_code == 0
    result = import_document(tmp_path, UNKNOWN)
    assert result.exit_code == 1
    assert (
        "3 accounts are on tiers the catalog does not have: 'gold' (2), 'platinum' (1); "
        "they would get the default tier 'free'"
    ) in result.output
    assert "1 usage counters are for codes the catalog does not meter: 'api_cals' (1)" in result.output
    assert "nothing imported" in result.output and "--allow-unknown" in result.output
    assert exported_tenants() == ["acme"]  # unchanged


def test_allow_unknown_imports_them_and_says_how_many(tmp_path: Path, replica: Path) -> None:
    result = import_document(tmp_path, UNKNOWN, "--allow-unknown")
    assert result.exit_code == 0, result.output
    assert "imported 4 accounts and 1 usage counters" in result.output
    assert "warning: imported anyway (--allow-unknown): 3 accounts are on tiers" in result.output
    assert exported_tenants() == ["acme", "t1", "t2", "t3"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([ACME], 'must be a JSON object {"accounts": [...], "usage": [...]}, not an array'),
        ("acme", "not a string"),
        (None, "not null"),
        ({"accounts": ["acme"]}, "accounts[0]: must be a JSON object, not a string"),
        ({"accounts": [ACME], "usage": [7]}, "usage[0]: must be a JSON object, not a number"),
    ],
)
def test_a_document_of_the_wrong_shape_gets_a_plain_message(
    tmp_path: Path, replica: Path, document: object, message: str
) -> None:
    result = import_document(tmp_path, document)
    assert result.exit_code == 1
    assert message in result.output
    assert "instance of" not in result.output


def test_export_without_a_replica_fails_and_creates_nothing(tmp_path: Path, replica: Path) -> None:
    result = CliRunner().invoke(main, ["replica", "export", str(tmp_path / "backup.json")])
    assert result.exit_code == 1
    assert f"no replica at {replica} (TIERGATE_REPLICA_PATH): nothing to export" in result.output
    assert not replica.exists() and not (tmp_path / "backup.json").exists()


def test_export_of_a_replica_never_filled_fails(tmp_path: Path, replica: Path) -> None:
    from tiergate.sidecar.replica.store import open_replica

    open_replica(replica).close()  # what a sidecar that never synced leaves behind
    result = CliRunner().invoke(main, ["replica", "export"])
    assert result.exit_code == 1
    assert "was never imported into nor synced from a daemon: nothing to export" in result.output


# -- plans check ----------------------------------------------------------------------------------

EVERY_LAYER = """
default_tier: gold
metrics:
  api_calls: {aggregation: sum}
tiers:
  free: {rank: 0, features: {sso: 3}}
  pro:
    rank: 0
    prices: {month: {lookup_key: pm, unit_amount: -1, currency: usd}}
routes:
  - {path: /api/*, feature: reports, usage: storage}
"""


def test_plans_check_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(EVERY_LAYER)
    result = CliRunner().invoke(main, ["plans", "check", str(plans)])
    assert result.exit_code == 1
    for expected in [
        "tiers.free.features.sso: a feature is true, false",  # schema
        "metrics.api_calls: aggregation 'sum' needs 'field'",  # schema
        "tiers.pro.prices.month.unit_amount:",  # schema
        "default_tier: 'gold' is not one of the tiers",  # across fields
        "tiers.pro.rank: 0 is also the rank of 'free'",
        "routes[0].feature: 'reports' is in no tier's features",
        "routes[0].usage: 'storage' is not a metric",
    ]:
        assert expected in result.output


def test_plans_check_defaults_to_tiergate_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = tmp_path / "served.yaml"
    plans.write_text(EVERY_LAYER)
    monkeypatch.setenv("TIERGATE_PLANS", str(plans))
    result = CliRunner().invoke(main, ["plans", "check"])
    assert result.exit_code == 1
    assert f"{plans}: invalid" in result.output


@pytest.mark.usefixtures("daemon_env")
def test_sync_full_fails_in_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setenv("TIERGATE_MIRROR_PATH", str(not_a_directory / "mirror.db"))
    monkeypatch.setenv("TIERGATE_PLANS", str(ROOT / "plans" / "plans.yaml"))
    result = CliRunner().invoke(main, ["sync", "--full"])
    assert result.exit_code == 1
    assert (
        f"error: cannot create the directory of mirror {not_a_directory / 'mirror.db'} "
        "(TIERGATE_MIRROR_PATH): File exists"
    ) in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


PASSWORD = "hunter2-s3cret"


@pytest.mark.usefixtures("daemon_env")
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"mysql://admin:{PASSWORD}@db:3306/x", "'mysql://admin:***@db:3306/x'"),
        (f"postgres ql://u:{PASSWORD}@h/db", "'postgres ql://u:***@h/db'"),
        (f"u:{PASSWORD}@h/db?password={PASSWORD}", "'u:***@h/db?password=***'"),
    ],
)
def test_an_invalid_mirror_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    monkeypatch.setenv("TIERGATE_MIRROR_URL", url)
    result = CliRunner().invoke(main, ["sync-daemon"])
    assert result.exit_code == 2
    assert f"invalid setting TIERGATE_MIRROR_URL={shown}: must start with postgresql://" in result.output
    assert PASSWORD not in result.output


@pytest.mark.usefixtures("daemon_env")
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD}@[::1/db",  # libpq quotes a URI it cannot parse
        f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db",
        f"postgresql://u:{PASSWORD}@127.0.0.1:5432/db?bogus=1",
    ],
)
def test_a_postgres_url_libpq_refuses_is_reported_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("TIERGATE_MIRROR_URL", url)
    monkeypatch.setenv("TIERGATE_PLANS", str(ROOT / "plans" / "plans.yaml"))
    result = CliRunner().invoke(main, ["sync", "--full"])
    assert result.exit_code == 1, result.output
    assert "error: PostgreSQL mirror at postgresql://u:***@" in result.output
    assert PASSWORD not in result.output
    assert PASSWORD not in repr(result.exception) and result.exception.__cause__ is None  # type: ignore[union-attr]
