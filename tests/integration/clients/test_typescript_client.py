"""The TypeScript client's own tests (Node's test runner) against the real sidecar process.

`make test` installs the client's npm dependencies from its lockfile and builds it (types
generated from tiergate/sidecar/openapi.yaml) before pytest runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.integration.clients.conftest import RunningSidecar

PACKAGE = Path(__file__).parents[3] / "clients" / "typescript"
BUILT = PACKAGE / "dist" / "test" / "client.test.js"


def node() -> str:
    found = shutil.which("node")
    assert found, "node is not on PATH: `make typescript` installs Debian's nodejs when it is missing"
    assert BUILT.exists(), f"{BUILT} is missing: run `make typescript` (npm ci + build) first"
    return found


def test_typescript_client_suite(sidecar: RunningSidecar) -> None:
    env = {
        **os.environ,
        "TIERGATE_TEST_SIDECAR": sidecar.url,
        "TIERGATE_TEST_CHECK_LISTENER": sidecar.check_url,
    }
    run = subprocess.run(
        [node(), "--test", "--test-force-exit", "--test-reporter=spec", "dist/test/"],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "# fail 0" in run.stdout or "fail 0" in run.stdout
