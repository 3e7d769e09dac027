"""LocalDecisions runs inside the host app's process: it writes nothing to the host's stdout and
logs through the host's own logging set-up (or structlog's, when the host configured it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.clients.conftest import ROOT
from tests.integration.sidecar.conftest import ACCOUNTS, USAGE, write_replica

HOST_APP = """
import asyncio, logging, sys
from pathlib import Path

if sys.argv[4] == "logging":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="host-log %(name)s %(message)s")
elif sys.argv[4] == "structlog":
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

from tiergate.sidecar.local import LocalDecisions

async def main() -> None:
    async with LocalDecisions(
        replica_path=Path(sys.argv[1]), plans=Path(sys.argv[2]), policies=Path(sys.argv[3])
    ) as local:
        decisions = [await local.check("pro-active", "sso"), await local.check("nobody", "sso")]
    print("host:", [d.reason for d in decisions])

asyncio.run(main())
"""


def run_host_app(
    tmp_path: Path, logging_setup: str, policies: Path = ROOT / "policies"
) -> subprocess.CompletedProcess[str]:
    replica = tmp_path / "replica.db"
    if not replica.exists():
        write_replica(replica, ACCOUNTS, USAGE)
    plans = ROOT / "plans" / "plans.yaml"
    args = [sys.executable, "-c", HOST_APP, str(replica), str(plans), str(policies), logging_setup]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)


def test_a_host_that_set_up_no_logging_sees_only_its_own_output(tmp_path: Path) -> None:
    run = run_host_app(tmp_path, "none")
    assert run.stdout == "host: ['ok', 'not_in_plan']\n"
    assert run.stderr == ""  # info events go to logging's default: nowhere below WARNING


def test_errors_reach_stderr_through_logging_s_last_resort(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "broken.rego").write_text("package tiergate.entitlements\nthis is not rego\n")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_host_app(tmp_path, "none", policies)
    assert failed.value.stdout == ""  # the host's stdout stays its own, even on a failure
    assert "event='policy_reload_failed'" in failed.value.stderr


def test_a_host_with_logging_gets_the_events_there(tmp_path: Path) -> None:
    run = run_host_app(tmp_path, "logging")
    assert run.stdout == "host: ['ok', 'not_in_plan']\n"
    assert "host-log tiergate." in run.stderr and "event='policy_" in run.stderr


def test_a_host_that_configured_structlog_gets_them_through_structlog(tmp_path: Path) -> None:
    run = run_host_app(tmp_path, "structlog")
    assert run.stdout == "host: ['ok', 'not_in_plan']\n"
    assert "policy_" in run.stderr and "host-log" not in run.stderr
