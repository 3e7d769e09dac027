"""The README's "Calling it from your app" examples run as written, against a real sidecar: scripts
run in a fresh interpreter; the web-app examples are loaded and their `app` gets real requests."""

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.clients.conftest import RunningSidecar

ROOT = Path(__file__).parents[3]
SIDECAR = "http://127.0.0.1:9191"


def readme_blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Calling it from your app", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


SCRIPTS = [b for b in readme_blocks("python") if "\napp = " not in b and "LocalDecisions(" not in b]
APPS = [b for b in readme_blocks("python") if "\napp = " in b]
(LOCAL,) = [b for b in readme_blocks("python") if "LocalDecisions(" in b]


def test_the_section_has_every_kind_of_example() -> None:
    assert len(SCRIPTS) >= 2 and len(APPS) == 2 and len(readme_blocks("js")) == 1


def in_place(code: str, sidecar: RunningSidecar) -> str:
    """The example against the test's sidecar, its timeouts widened for a busy CI machine (a
    usage call waits for an fsync; 250 ms is a production budget, not a loaded runner's)."""
    assert SIDECAR in code, "every example names the sidecar's address"
    widened = code.replace("timeout_s=0.25", "timeout_s=10").replace("timeoutMs: 250", "timeoutMs: 10000")
    return widened.replace(SIDECAR, sidecar.url)


@pytest.mark.parametrize("index", range(len(SCRIPTS)))
def test_python_script_runs(sidecar: RunningSidecar, index: int) -> None:
    run = subprocess.run(
        [sys.executable, "-c", in_place(SCRIPTS[index], sidecar)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "sidecar_unreachable" not in run.stdout + run.stderr


def test_local_decisions_example_runs(sidecar: RunningSidecar) -> None:
    shared = 'Path("/var/lib/tiergate")'
    assert shared in LOCAL
    code = LOCAL.replace(shared, f"Path({str(sidecar.home)!r})")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "reports: False (not_in_plan, data as of 20" in run.stdout


@pytest.mark.parametrize("index", range(len(APPS)))
async def test_web_app_example_gates_its_route(sidecar: RunningSidecar, index: int) -> None:
    namespace: dict[str, Any] = {"__name__": f"readme_app_{index}"}
    exec(
        compile(in_place(APPS[index], sidecar), f"README app {index}", "exec"), namespace
    )  # the README's own code
    app = namespace["app"]
    answers = []
    if isinstance(app, web.Application):
        async with TestClient(TestServer(app)) as client:
            for tenant in ("pro-active", "nobody"):
                response = await client.get("/reports", headers={"X-Tenant-Id": tenant})
                answers.append((response.status, await response.json()))
    else:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
            for tenant in ("pro-active", "nobody"):
                reply = await http.get("/reports", headers={"X-Tenant-Id": tenant})
                answers.append((reply.status_code, reply.json()))
        await namespace["gate"].client.close()
    assert answers[0] == (200, {"tier": "pro"})
    assert (answers[1][0], answers[1][1]["reason"]) == (403, "not_in_plan")


DRIVE_EXPRESS = """
const server = app.listen(0, "127.0.0.1");
await new Promise((resolve) => server.once("listening", resolve));
const base = `http://127.0.0.1:${server.address().port}`;
for (const tenant of ["pro-active", "nobody"]) {
  const response = await fetch(base + "/reports", { headers: { "X-Tenant-Id": tenant } });
  console.log(`status ${response.status} ${JSON.stringify(await response.json())}`);
}
server.close();
"""


def test_javascript_example_runs(sidecar: RunningSidecar) -> None:
    (block,) = readme_blocks("js")
    package = ROOT / "clients" / "typescript"
    # Inside the package, so its own name resolves; a name of its own per run, so two runs at once
    # (two suites on one checkout) never execute each other's script against a stopped sidecar.
    script = package / "dist" / f"readme-example-{uuid.uuid4().hex[:12]}.mjs"
    script.write_text(in_place(block, sidecar) + DRIVE_EXPRESS, encoding="utf-8")
    try:
        run = subprocess.run(["node", str(script)], cwd=package, capture_output=True, text=True, timeout=120)
    finally:
        script.unlink(missing_ok=True)
    assert run.returncode == 0, run.stderr
    assert "reports: false (not_in_plan)" in run.stdout
    assert 'status 200 {"tier":"pro"}' in run.stdout and "status 403" in run.stdout
