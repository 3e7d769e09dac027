"""The runtime lock resolves, hashes checked, on linux aarch64 and macOS arm64 as well as here:
`pip download --only-binary=:all: --platform ... --require-hashes` of requirements/runtime.txt.

The wheels are kept in a cache outside the checkout, so after a first run (about a minute a
platform) the check is offline: `--no-index` from the cache, every hash verified again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lockfile import REQUIREMENTS, read_lock

pytestmark = pytest.mark.slow

# pip 23 does not widen a manylinux tag to older glibc versions: list the ones wheels use.
PLATFORMS = {
    "linux-aarch64": [
        "manylinux_2_34_aarch64",
        "manylinux_2_28_aarch64",
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
    ],
    "macos-arm64": ["macosx_14_0_arm64"],
}
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiergate" / "platform-wheels"


def download(platform: str, *source: str) -> subprocess.Popen[str]:
    """`pip download` of the runtime lock for one platform into its cache folder."""
    tags = [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"]
    command += ["--only-binary=:all:", *tags, "--python-version", "3.11", "--implementation", "cp"]
    command += ["--abi", "cp311", "--abi", "abi3", "--abi", "none", "--require-hashes", "--no-deps"]
    command += [*source, "-r", str(REQUIREMENTS / "runtime.txt"), "-d", str(CACHE / platform)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def resolve(platforms: list[str]) -> dict[str, tuple[int, str]]:
    """Offline from the cache first; the platforms whose cache lacks a pin go to the index, at once."""
    offline = {p: finish(download(p, "--no-index", "--find-links", str(CACHE / p))) for p in platforms}
    missing = [p for p, (code, _) in offline.items() if code != 0]
    online = {p: download(p) for p in missing}
    return offline | {p: finish(process) for p, process in online.items()}


def test_the_runtime_lock_resolves_for_linux_aarch64_and_macos_arm64() -> None:
    results = resolve(sorted(PLATFORMS))
    for platform, (code, output) in results.items():
        assert code == 0, f"{platform}: {output[-3000:]}"
    engine = read_lock(REQUIREMENTS / "runtime.txt")["gordon-to-regorus"]
    for platform in PLATFORMS:
        wheels = {w.name for w in (CACHE / platform).glob("gordon_to_regorus-*.whl")}
        assert any(engine.version in w and ("aarch64" in w or "arm64" in w) for w in wheels), wheels
