"""Tokens and shared secrets have a real minimum length, each token of a list on its own, and a
process refuses to start with a message naming the setting (never the value)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError

from tiergate.cli import main
from tiergate.errors import SettingsError
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.settings import load_settings
from tiergate.token_rules import MIN_SECRET_CHARS, secret_problem, token_list_problem

LONG = "x" * MIN_SECRET_CHARS
SHORT = "y" * (MIN_SECRET_CHARS - 1)
DAEMON_ENV = {
    "TIERGATE_STRIPE_API_KEY": "sk_test_rules",
    "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_" + LONG,
    "TIERGATE_FEED_TOKEN": LONG,
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (LONG, None),
        (f"{LONG},{LONG}z", None),
        (f" {LONG} , {LONG} ,", None),
        ("", "is empty"),
        (" , ", "is empty"),
        (SHORT, f"the token has {MIN_SECRET_CHARS - 1} characters"),
        (f"{LONG},{SHORT}", f"token 2 of 2 has {MIN_SECRET_CHARS - 1} characters"),
        (f"{LONG},ab", "token 2 of 2 has 2 characters"),  # one long token does not carry a short one
        ("a" * 40 + ",", None),
    ],
)
def test_each_token_of_a_list_is_checked_on_its_own(value: str, problem: str | None) -> None:
    found = token_list_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)
        assert SHORT not in found, "a message never repeats the value"


@pytest.mark.parametrize(("value", "ok"), [(LONG, True), (SHORT, False), (" " * 20, False)])
def test_a_secret_has_a_minimum_length(value: str, ok: bool) -> None:
    assert (secret_problem(value) is None) is ok


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIERGATE_FEED_TOKEN", f"{LONG},{SHORT}"),
        ("TIERGATE_FEED_TOKEN", ""),
        ("TIERGATE_API_TOKEN", SHORT),
        ("TIERGATE_STRIPE_WEBHOOK_SECRET", "whsec_x"),
        ("TIERGATE_WEBHOOK_SECRET", SHORT),
    ],
)
def test_the_daemon_refuses_a_short_token_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    for name, default in DAEMON_ENV.items():
        monkeypatch.setenv(name, default)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = raised.value.message
    assert f"invalid setting {variable}=<hidden>" in message
    assert str(MIN_SECRET_CHARS) in message or "empty" in message
    assert value not in message or value == ""


def test_the_sidecar_refuses_a_short_feed_token() -> None:
    with pytest.raises(
        ValidationError, match=f"token 2 of 2 has 3 characters; each token needs at least {MIN_SECRET_CHARS}"
    ):
        SidecarSettings(feed_token=SecretStr(f"{LONG},abc"))
    assert SidecarSettings(feed_token=SecretStr(LONG)).sent_feed_token == LONG


def test_the_cli_names_the_setting_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERGATE_FEED_TOKEN", "short")
    monkeypatch.setenv("TIERGATE_DAEMON_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(main, ["sidecar"])
    assert result.exit_code == 2
    assert "TIERGATE_FEED_TOKEN=<hidden>" in result.output and "at least 16" in result.output
