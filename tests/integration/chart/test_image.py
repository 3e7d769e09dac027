"""The Dockerfile, checked without a Docker engine: hadolint, the facts the chart relies on (user,
paths, entrypoint), a build context that holds everything the Dockerfile copies, and the
HEALTHCHECK one-liner run for real against a local /healthz for both roles."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.integration.chart.tools import ROOT, hadolint
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.settings import DaemonSettings

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def arguments(word: str) -> list[str]:
    return [rest for instruction, rest in instructions() if instruction == word]


def env() -> dict[str, str]:
    found: dict[str, str] = {}
    for rest in arguments("ENV"):
        found.update(re.findall(r"(\w+)=(\S+)", rest))
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_image_for_both_roles_non_root_with_state_on_a_volume() -> None:
    assert arguments("ENTRYPOINT")[-1] == '["tiergate"]'
    assert arguments("CMD")[-1] == '["sidecar"]'
    froms = arguments("FROM")
    assert len(froms) == 2 and " AS build" in froms[0]  # multi-stage
    assert "ARG PYTHON_IMAGE=python:3.11-slim-" in DOCKERFILE.read_text(encoding="utf-8")
    assert arguments("USER")[-1] == "${TIERGATE_UID}:${TIERGATE_UID}"
    assert "TIERGATE_UID=10001" in arguments("ARG")
    assert arguments("VOLUME") == ['["/var/lib/tiergate"]']
    variables = env()
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"
    for name in ("TIERGATE_REPLICA_PATH", "TIERGATE_MIRROR_PATH"):
        assert variables[name].startswith("/var/lib/tiergate/"), name
    assert variables["TIERGATE_PLANS"] == "/etc/tiergate/plans/plans.yaml"
    assert variables["TIERGATE_POLICIES"] == "/etc/tiergate/policies"
    assert "--require-hashes" in " ".join(arguments("RUN"))


def default_ports(settings: type[BaseModel]) -> set[int]:
    """Every `*_port` setting's default, where it has one."""
    return {
        field.default
        for name, field in settings.model_fields.items()
        if name.endswith("_port") and isinstance(field.default, int)
    }


def test_every_default_port_is_exposed() -> None:
    exposed = {int(port) for rest in arguments("EXPOSE") for port in rest.split()}
    wanted = default_ports(SidecarSettings) | default_ports(DaemonSettings)
    assert {9190, 9191} <= wanted
    assert exposed == wanted


def test_builds_for_the_builders_platform_labelled_with_the_projects_version() -> None:
    assert not any("--platform" in rest for rest in arguments("FROM"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"VERSION={version}" in arguments("ARG")
    labels = " ".join(arguments("LABEL"))
    for key in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_pip_trusts_a_mounted_ca_bundle_never_a_copied_one() -> None:
    downloads = [rest for rest in arguments("RUN") if "pip install" in rest]
    assert downloads
    for rest in downloads:
        assert rest.startswith("--mount=type=secret,id=ca ") and "PIP_CERT=/run/secrets/ca" in rest, rest
    assert not any("ca-certificates.crt" in rest or "/run/secrets" in rest for rest in arguments("COPY"))


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list; every COPY source must survive it (and tests must not)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if (
                fnmatch.fnmatch(path, pattern)
                or path.startswith(pattern + "/")
                or (pattern.startswith("**/") and fnmatch.fnmatch(Path(path).name, pattern[3:]))
            ):
                keep = negate
        return keep

    sources = [
        source for rest in arguments("COPY") if not rest.startswith("--from") for source in rest.split()[:-1]
    ]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        wanted = [f.relative_to(ROOT).as_posix() for f in files if "__pycache__" not in f.parts]
        wanted = [f for f in wanted if not f.endswith("_test.rego")]
        assert wanted and all(included(f) for f in wanted), source
    assert not included("tests/unit/test_catalog.py") and not included(".venv/bin/python")
    assert not included("policies/entitlements_test.rego") and not included(".state/mirror.db")


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    _Health.status = 200


@pytest.mark.parametrize(
    ("role", "port_var"), [("sync-daemon", "TIERGATE_DAEMON_PORT"), ("sidecar", "TIERGATE_SIDECAR_PORT")]
)
def test_healthcheck_finds_the_role_and_its_port(
    role: str, port_var: str, health_server: HTTPServer, tmp_path: Path
) -> None:
    [healthcheck] = arguments("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    cmdline = tmp_path / "cmdline"  # stands in for /proc/1/cmdline of the container
    cmdline.write_bytes(b"/opt/tiergate/bin/python3.11\0/opt/tiergate/bin/tiergate\0" + role.encode() + b"\0")
    code = command[2].replace("/proc/1/cmdline", str(cmdline))
    port = str(health_server.server_address[1])
    other = "TIERGATE_SIDECAR_PORT" if port_var == "TIERGATE_DAEMON_PORT" else "TIERGATE_DAEMON_PORT"

    def run() -> int:
        environment = {port_var: port, other: "1"}  # the other role's port would fail
        return subprocess.run(
            [sys.executable, "-c", code], env=environment, capture_output=True, timeout=30
        ).returncode

    assert run() == 0
    _Health.status = 503
    assert run() != 0
