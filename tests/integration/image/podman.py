"""The image under test and its containers, run with podman (runc) on the host's loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from demo.processes import http_status

ROOT = Path(__file__).resolve().parents[3]
DIST = ROOT / "dist"
IMAGE_ID = DIST / "tiergate-image.id"
# runc, and explicit limits: on these machines podman's defaults (crun, the host's limits) cannot start a container.
RUN_OPTIONS = ["--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
UID = 10001
DEADLINE_S = 60.0


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def built_image() -> str:
    """The id of the image `make image` built last; builds it when there is none (cached: seconds)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed and apt-get could not install it: `make image` installs it")
    if (
        not IMAGE_ID.exists()
        or podman("image", "exists", IMAGE_ID.read_text().strip(), check=False).returncode
    ):
        subprocess.run(["make", "--no-print-directory", "image"], cwd=ROOT, check=True, timeout=3600)
    return IMAGE_ID.read_text().strip()


def inspect_image(image: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(podman("image", "inspect", image).stdout)
    return found[0]


@dataclass
class Container:
    """One detached container: read-only root, its state on a volume of its own, host network."""

    name: str
    image: str
    args: list[str]
    env: dict[str, str]
    volume: str = ""
    started: bool = field(default=False, init=False)

    def start(self) -> None:
        self.volume = podman("volume", "create", f"{self.name}-state").stdout.strip()
        env = [f"--env={key}={value}" for key, value in self.env.items()]
        podman(
            "run", "--detach", "--name", self.name, *RUN_OPTIONS,
            "--network", "host", "--read-only", "--read-only-tmpfs=false",
            "--volume", f"{self.volume}:/var/lib/tiergate:U",
            *env, self.image, *self.args,
        )  # fmt: skip
        self.started = True

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *argv, check=False)

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def logs(self) -> str:
        result = podman("logs", "--tail", "60", self.name, check=False)
        return f"----- {self.name} -----\n{result.stdout}{result.stderr}"

    def wait_http(self, url: str, accept: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            status = http_status(url)
            if status is not None and accept(status):
                return
            if not self.running():
                raise AssertionError(f"{self.name} exited before {url} answered\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"{url} did not answer within {DEADLINE_S:.0f} s\n{self.logs()}")

    def stop(self) -> None:
        if self.started:
            podman("rm", "--force", "--time", "5", self.name, check=False)
        if self.volume:
            podman("volume", "rm", "--force", self.volume, check=False)
