"""What a new user meets trying every command: defaults that say where they come from, no
required flag, settings and shell completion discoverable from the command line."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner

from tests.integration.sidecar.conftest import ACCOUNTS, USAGE, write_replica
from tests.integration.test_cli_misconfig import DAEMON_ENV
from tiergate.cli import main
from tiergate.cli_support import describe_default, settings_rows
from tiergate.sidecar.decisions import impact_report
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.settings import DaemonSettings

ROOT = Path(__file__).parents[2]
TIERGATE = Path(sys.executable).parent / "tiergate"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no plans/ nor policies/ in it, and no TIERGATE_* variable set."""
    for name in list(os.environ):
        if name.startswith("TIERGATE_"):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


# -- sync ----------------------------------------------------------------------------------


def test_sync_needs_no_flag_and_runs_the_full_reconcile(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DAEMON_ENV.items():
        monkeypatch.setenv(name, value)
    blocker = elsewhere / "file"
    blocker.write_text("")
    monkeypatch.setenv("TIERGATE_MIRROR_PATH", str(blocker / "mirror.db"))
    monkeypatch.setenv("TIERGATE_PLANS", str(ROOT / "plans" / "plans.yaml"))
    for args in (["sync"], ["sync", "--full"]):  # --full is still accepted from older scripts
        result = CliRunner().invoke(main, args)
        # It went as far as opening the mirror: the reconcile ran, no option was missing.
        assert result.exit_code == 1, result.output
        assert "cannot create the directory of mirror" in result.output
    assert "--full" not in CliRunner().invoke(main, ["sync", "--help"]).output


# -- plans diff ----------------------------------------------------------------------------


def candidate_catalog(path: Path, **changes: Any) -> Path:
    plans = yaml.safe_load((ROOT / "plans" / "plans.yaml").read_text(encoding="utf-8"))
    plans["tiers"]["pro"]["prices"]["month"]["unit_amount"] = changes.get("pro_month", 4900)
    if "pro_api_calls" in changes:
        plans["tiers"]["pro"]["features"]["api_calls"] = {"limit": changes["pro_api_calls"]}
    path.write_text(yaml.safe_dump(plans), encoding="utf-8")
    return path


def test_plans_diff_reads_the_live_catalog_and_policies_from_the_settings(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = candidate_catalog(elsewhere.parent / "live.yaml", pro_month=5900)
    monkeypatch.setenv("TIERGATE_PLANS", str(live))
    monkeypatch.setenv("TIERGATE_POLICIES", str(ROOT / "policies"))
    result = CliRunner().invoke(main, ["plans", "diff", str(ROOT / "plans" / "plans.yaml")])
    assert result.exit_code == 0, result.output
    assert "price pro/month: 59.00 usd (pro_month) -> 49.00 usd (pro_month)" in result.output
    help_text = CliRunner().invoke(main, ["plans", "diff", "--help"]).output
    assert "TIERGATE_PLANS" in help_text and "TIERGATE_POLICIES" in help_text


@pytest.fixture
def replica(tmp_path: Path) -> Path:
    path = tmp_path / "replica.db"
    write_replica(path, ACCOUNTS, USAGE)
    return path


def impact(replica: Path, candidate: Path, *args: str) -> Any:
    live = ["--current", str(ROOT / "plans" / "plans.yaml"), "--current-policies", str(ROOT / "policies")]
    return CliRunner().invoke(
        main,
        [
            "plans",
            "diff",
            str(candidate),
            *live,
            "--impact",
            "--replica",
            str(replica),
            "--workers",
            "1",
            *args,
        ],
    )


def test_fail_on_gates_ci_on_the_kinds_chosen(tmp_path: Path, replica: Path) -> None:
    lowered = candidate_catalog(tmp_path / "lowered.yaml", pro_api_calls=50_000)  # pro-active uses 99,999
    tripped = impact(replica, lowered, "--fail-on", "lose,over-limit")
    assert tripped.exit_code == 3, tripped.output
    assert "fail-on: over-limit: 1" in tripped.output
    passed = impact(replica, lowered, "--fail-on", "lose,gain,price")
    assert passed.exit_code == 0, passed.output
    unchanged = impact(replica, ROOT / "plans" / "plans.yaml", "--fail-on", "any")
    assert unchanged.exit_code == 0, unchanged.output
    assert impact(replica, lowered, "--json", "--fail-on", "any").exit_code == 3


def test_fail_on_without_impact_gates_prices_only(tmp_path: Path) -> None:
    dearer = candidate_catalog(tmp_path / "dearer.yaml", pro_month=5900)
    live = ["--current", str(ROOT / "plans" / "plans.yaml"), "--current-policies", str(ROOT / "policies")]
    priced = CliRunner().invoke(main, ["plans", "diff", str(dearer), *live, "--fail-on", "price"])
    assert priced.exit_code == 3 and "fail-on: price: 1" in priced.output
    needs = CliRunner().invoke(main, ["plans", "diff", str(dearer), *live, "--fail-on", "price,lose"])
    assert needs.exit_code == 2 and "--fail-on lose needs --impact" in needs.output
    unknown = CliRunner().invoke(main, ["plans", "diff", str(dearer), *live, "--fail-on", "loses"])
    assert unknown.exit_code == 2
    assert "'loses' is not a choice; give one or more of lose, over-limit" in unknown.output


def test_the_table_names_the_tenants_of_each_change_bounded(
    tmp_path: Path, replica: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lowered = candidate_catalog(tmp_path / "lowered.yaml", pro_api_calls=50_000)
    table = impact(replica, lowered).output
    assert "  api_calls, over new limit: pro-active\n" in table
    monkeypatch.setattr(impact_report, "EXAMPLES", 2)
    table = impact(replica, lowered).output
    changed = next(line for line in table.splitlines() if "api_calls, limit changed:" in line)
    assert len(changed.split(": ", 1)[1].split(" (and")[0].split(", ")) == 2
    assert "more; --json for the report)" in changed


@pytest.mark.parametrize(
    ("text", "chosen"),
    [
        ("lose", ("lose",)),
        ("over-limit, price", ("over-limit", "price")),
        ("gain,any", tuple(impact_report.FAIL_ON)),
    ],
)
def test_fail_on_choices_parse(text: str, chosen: tuple[str, ...]) -> None:
    assert impact_report.parse_fail_on(text) == chosen


def test_tripped_counts_only_the_kinds_chosen() -> None:
    totals = {"lose": 2, "over_limit": 0, "gain": 5}
    assert impact_report.tripped(("lose", "over-limit"), totals, prices=0) == ["lose: 2"]
    assert impact_report.tripped(("over-limit", "limit-changed"), totals, prices=3) == []
    assert impact_report.tripped(tuple(impact_report.FAIL_ON), totals, prices=1) == [
        "lose: 2",
        "gain: 5",
        "price: 1",
    ]


# -- plans push ----------------------------------------------------------------------------


@pytest.mark.usefixtures("elsewhere")
def test_plans_push_says_the_default_it_used_when_tiergate_plans_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in DAEMON_ENV.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["plans", "push", "--dry-run"])
    assert "planning catalog plans/plans.yaml (the default: TIERGATE_PLANS is unset)" in result.output
    assert "from TIERGATE_PLANS" not in result.output


# -- usage resend --------------------------------------------------------------------------


def resend(sink: str = "lago") -> Any:
    return CliRunner().invoke(main, ["usage", "resend", "--sink", sink, "--since", "2026-11-01T00:00:00Z"])


def test_resend_needs_only_the_mirror_and_warns_when_the_sink_is_off(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERGATE_MIRROR_PATH", str(elsewhere / "mirror.db"))  # no Stripe setting at all
    result = resend()
    assert result.exit_code == 0, result.output
    assert "lago: cursor 0 -> 0; 0 events will be sent again" in result.output
    assert "warning: the lago sink is not configured (TIERGATE_LAGO_API_URL and TIERGATE_LAGO_API_KEY)" in (
        result.output
    )
    meters = resend("stripe_meters")
    assert (
        meters.exit_code == 0
        and "the stripe_meters sink is off (TIERGATE_STRIPE_METER_SINK)" in meters.output
    )
    monkeypatch.setenv("TIERGATE_LAGO_API_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("TIERGATE_LAGO_API_KEY", "lago-key")
    configured = resend()
    assert configured.exit_code == 0 and "warning" not in configured.output


def test_resend_names_a_bad_mirror_setting(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERGATE_MIRROR_URL", "mysql://nope")
    result = resend()
    assert result.exit_code == 2
    assert (
        "invalid setting TIERGATE_MIRROR_URL='mysql://nope': must start with postgresql://" in result.output
    )


# -- overrides --actor ---------------------------------------------------------------------


class RecordingDaemon(BaseHTTPRequestHandler):
    """Answers the overrides API as the daemon would, keeping each request's actor."""

    actors: ClassVar[list[str | None]] = []

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.actors.append(body.get("actor"))
        self._answer({"value": body["value"], "reason": body["reason"], "expires_at": None})

    def do_DELETE(self) -> None:
        self.actors.append(parse_qs(urlsplit(self.path).query).get("actor", [None])[0])
        self._answer({})

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def daemon() -> Iterator[str]:
    RecordingDaemon.actors = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_overrides_name_the_os_user_then_tiergate_actor_then_actor(daemon: str) -> None:
    env = {"TIERGATE_DAEMON_URL": daemon, "TIERGATE_API_TOKEN": "t", "TIERGATE_ACTOR": None}
    set_sso = ["overrides", "set", "acme", "sso", "true", "--reason", "pilot"]
    for args, extra in [
        (set_sso, {}),
        (set_sso, {"TIERGATE_ACTOR": "ana@support"}),
        ([*set_sso, "--actor", "bob"], {"TIERGATE_ACTOR": "ana@support"}),
        (["overrides", "rm", "acme", "sso"], {}),
    ]:
        result = CliRunner().invoke(main, args, env={**env, **extra})
        assert result.exit_code == 0, result.output
    assert RecordingDaemon.actors == [getpass.getuser(), "ana@support", "bob", getpass.getuser()]


def test_tiergate_actor_is_no_unknown_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiergate.cli_support import unknown_settings_of

    CliRunner().invoke(main, ["--help"])  # the processes register their settings
    monkeypatch.setenv("TIERGATE_ACTOR", "ana")
    monkeypatch.setenv("TIERGATE_ACTR", "ana")
    assert unknown_settings_of("sidecar") == [("TIERGATE_ACTR", "TIERGATE_ACTOR")]


# -- --help lists the settings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "settings", "rows"),
    [
        (
            "sidecar",
            SidecarSettings,
            ["TIERGATE_REPLICA_PATH  .state/replica.db", "TIERGATE_SIDECAR_PORT  9191"],
        ),
        ("sync-daemon", DaemonSettings, ["TIERGATE_STRIPE_API_KEY  required", "TIERGATE_MIRROR_URL  unset"]),
    ],
)
def test_a_process_help_lists_every_setting_and_points_to_the_guide(
    command: str, settings: type[Any], rows: list[str]
) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "docs/operator.md" in result.output
    for name in settings.model_fields:
        assert f"TIERGATE_{name.upper()} " in result.output
    squeezed = [" ".join(line.split()) for line in result.output.splitlines()]
    for row in rows:
        assert " ".join(row.split()) in squeezed


def test_settings_rows_say_each_default_as_an_operator_writes_it() -> None:
    rows = dict(settings_rows(SidecarSettings))
    assert rows["TIERGATE_LOG_JSON"] == "true"
    assert rows["TIERGATE_CHECK_PORT"] == "unset"
    assert rows["TIERGATE_PLANS"] == "plans/plans.yaml"
    required = next(info for info in DaemonSettings.model_fields.values() if info.is_required())
    assert describe_default(required) == "required"


# -- shell completion ----------------------------------------------------------------------


def test_shell_completion_is_produced_and_documented() -> None:
    env = {**os.environ, "_TIERGATE_COMPLETE": "bash_source"}
    script = subprocess.run([TIERGATE], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "_tiergate_completion()" in script.stdout and "complete -o nosort -F" in script.stdout
    env = {
        **os.environ,
        "_TIERGATE_COMPLETE": "bash_complete",
        "COMP_WORDS": "tiergate pl",
        "COMP_CWORD": "1",
    }
    words = subprocess.run([TIERGATE], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "plain,plans" in words.stdout.splitlines()
    guide = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert 'eval "$(_TIERGATE_COMPLETE=bash_source tiergate)"' in guide
