"""Both servers as real processes: a taken port is one line naming the setting, `listening` comes
only once the port answers, unknown TIERGATE_* variables are named, and no start-up failure prints
a traceback unless TIERGATE_LOG_LEVEL=debug."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.processes import free_port, tiergate_command

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 60


def base_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The process environment without any TIERGATE_* of the caller's, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    env |= {
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_REPLICA_PATH": str(tmp_path / "replica.db"),
        "TIERGATE_MIRROR_PATH": str(tmp_path / "mirror.db"),
        "TIERGATE_STRIPE_API_KEY": "sk_test_startup",
        "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",  # never called: no reconcile at start
        "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_startup_0123456",
        "TIERGATE_FEED_TOKEN": "feed-token-for-startup",
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_LOG_JSON": "true",
    }
    return env | {f"TIERGATE_{k.upper()}": v for k, v in settings.items()}


def port_setting(role: str) -> str:
    return "TIERGATE_SIDECAR_PORT" if role == "sidecar" else "TIERGATE_DAEMON_PORT"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def run_to_exit(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tiergate_command(role), env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


@pytest.mark.parametrize("role", ["sidecar", "sync-daemon"])
def test_a_taken_port_is_one_line_naming_the_setting(tmp_path: Path, taken_port: int, role: str) -> None:
    setting = port_setting(role)
    result = run_to_exit(role, base_env(tmp_path, **{setting.removeprefix("TIERGATE_"): str(taken_port)}))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot listen on 127.0.0.1:{taken_port}: port {taken_port} is already in use "
        f"({setting}={taken_port}); stop the other process or set {setting} to a free port"
    ]
    assert "Traceback" not in result.stderr
    assert '"listening"' not in result.stderr


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_start_up_failure_has_a_traceback_only_at_debug(tmp_path: Path, level: str) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    env = base_env(
        tmp_path,
        replica_path=str(not_a_directory / "replica.db"),
        sidecar_port=str(free_port()),
        log_level=level,
    )
    result = run_to_exit("sidecar", env)
    assert result.returncode == 1
    assert ("Traceback" in result.stderr) is (level == "debug")
    if level == "info":
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: cannot create the directory of replica {not_a_directory / 'replica.db'} "
            "(TIERGATE_REPLICA_PATH): File exists"
        ]


def read_until_listening(process: subprocess.Popen[str], port: int) -> list[dict[str, Any]]:
    """Every JSON log line up to `listening`; the port must already answer when it is printed."""
    assert process.stderr is not None
    events: list[dict[str, Any]] = []
    for line in process.stderr:
        if not line.startswith("{"):
            continue
        events.append(json.loads(line))
        if events[-1]["event"] == "listening":
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # accepted: the line came after the bind
            return events
    raise AssertionError(f"exited without `listening`: {events}")


@pytest.mark.parametrize("role", ["sidecar", "sync-daemon"])
def test_listening_is_logged_once_listening_and_unknown_settings_are_named(tmp_path: Path, role: str) -> None:
    port = free_port()
    misspelt = {"sidecar": "SIDCAR_HOST", "sync-daemon": "DEAMON_PORT"}[role]
    env = base_env(
        tmp_path, **{port_setting(role).removeprefix("TIERGATE_"): str(port), misspelt: "x", "port": "1"}
    )
    with subprocess.Popen(
        tiergate_command(role), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as process:
        try:
            events = read_until_listening(process, port)
        finally:
            process.terminate()
            assert process.wait(timeout=TIMEOUT_S) == 0
    listening = [e for e in events if e["event"] == "listening"]
    assert listening[0]["address"] == f"127.0.0.1:{port}"
    unknown = {e["variable"]: e["did_you_mean"] for e in events if e["event"] == "unknown_setting"}
    wanted = {"sidecar": "TIERGATE_SIDECAR_HOST", "sync-daemon": "TIERGATE_DAEMON_PORT"}[role]
    assert unknown == {f"TIERGATE_{misspelt}": wanted, "TIERGATE_PORT": port_setting(role)}
