"""Unknown TIERGATE_* variables: named, with the closest setting of the starting process first."""

from __future__ import annotations

import pytest

from tiergate.settings_errors import unknown_settings

SIDECAR = ["sidecar_host", "sidecar_port", "daemon_url", "replica_path", "feed_token", "authz_port"]
DAEMON = ["daemon_host", "daemon_port", "stripe_api_key", "feed_token", "mirror_path"]


@pytest.mark.parametrize(
    ("variable", "own", "other", "closest"),
    [
        ("TIERGATE_SIDCAR_HOST", SIDECAR, DAEMON, "TIERGATE_SIDECAR_HOST"),
        ("TIERGATE_DEAMON_URL", SIDECAR, DAEMON, "TIERGATE_DAEMON_URL"),
        ("TIERGATE_PORT", SIDECAR, DAEMON, "TIERGATE_SIDECAR_PORT"),
        ("TIERGATE_PORT", DAEMON, SIDECAR, "TIERGATE_DAEMON_PORT"),
        ("TIERGATE_SIDECAR_PROT", DAEMON, SIDECAR, "TIERGATE_SIDECAR_PORT"),  # only the other's
        ("TIERGATE_WHATEVER", SIDECAR, DAEMON, None),
    ],
)
def test_an_unknown_variable_gets_the_closest_setting(
    variable: str, own: list[str], other: list[str], closest: str | None
) -> None:
    assert unknown_settings({variable: "1"}, own, other) == [(variable, closest)]


def test_known_settings_of_either_process_and_other_variables_are_not_reported() -> None:
    environ = {"TIERGATE_STRIPE_API_KEY": "sk", "TIERGATE_SIDECAR_PORT": "1", "PATH": "/bin", "TIERGATE": ""}
    assert unknown_settings(environ, SIDECAR, DAEMON) == []
