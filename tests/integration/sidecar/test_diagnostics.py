"""The diagnostics listener (health, readiness, metrics for probes) and `tiergate healthcheck`."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from demo.processes import Process, free_port, tiergate_command
from tiergate.cli import main

ROOT = Path(__file__).resolve().parents[3]


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_diagnostics_listener_serves_probes_and_metrics_only(tmp_path: Path) -> None:
    port, diagnostics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")} | {
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_REPLICA_PATH": str(tmp_path / "replica.db"),
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_DIAGNOSTICS_HOST": "127.0.0.1",  # the pod IP in a cluster
        "TIERGATE_DIAGNOSTICS_PORT": str(diagnostics),
    }
    sidecar = Process("sidecar", tiergate_command("sidecar"), env, tmp_path / "sidecar.log", ROOT)
    sidecar.start()
    try:
        sidecar.wait_http(f"http://127.0.0.1:{diagnostics}/readyz", lambda status: status == 200)
        probe = f"http://127.0.0.1:{diagnostics}"
        assert [status_of(probe + path) for path in ("/healthz", "/readyz", "/metrics")] == [200, 200, 200]
        assert [status_of(probe + path) for path in ("/v1/status", "/v1/check?tenant=a&feature=sso")] == [
            404,
            404,
        ]
        assert status_of(f"http://127.0.0.1:{port}/v1/status") == 200  # loopback: all of it

        runner = CliRunner()
        assert runner.invoke(main, ["healthcheck", "--url", probe]).exit_code == 0
        assert runner.invoke(main, ["healthcheck", "--ready", "--url", probe]).exit_code == 0
    finally:
        sidecar.stop()
    gone = CliRunner().invoke(
        main, ["healthcheck", "--url", f"http://127.0.0.1:{diagnostics}", "--timeout", "1"]
    )
    assert gone.exit_code == 1 and "unhealthy" in gone.output


def test_healthcheck_names_a_failing_readiness(tmp_path: Path) -> None:
    """A sidecar whose daemon never answered is alive but not ready: exit 1 with the status."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")} | {
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_REPLICA_PATH": str(tmp_path / "replica.db"),
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_DAEMON_URL": f"http://127.0.0.1:{free_port()}",
        "TIERGATE_FEED_TOKEN": "feed-token-unused",
    }
    sidecar = Process("sidecar", tiergate_command("sidecar"), env, tmp_path / "sidecar.log", ROOT)
    sidecar.start()
    try:
        sidecar.wait_http(f"http://127.0.0.1:{port}/healthz", lambda status: status == 200)
        url = f"http://127.0.0.1:{port}"
        alive = subprocess.run(
            [*tiergate_command("healthcheck"), "--url", url], capture_output=True, text=True, check=False
        )
        ready = subprocess.run(
            [*tiergate_command("healthcheck"), "--ready", "--url", url],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        sidecar.stop()
    assert alive.returncode == 0, alive.stderr
    assert ready.returncode == 1 and "503" in ready.stderr
