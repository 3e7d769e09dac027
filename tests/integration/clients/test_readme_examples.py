"""The README's "Calling it from your app" examples run as written, against a real sidecar."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.clients.conftest import RunningSidecar

ROOT = Path(__file__).parents[3]
SIDECAR = "http://127.0.0.1:9191"


def readme_blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Calling it from your app", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_has_python_examples() -> None:
    assert len(readme_blocks("python")) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks("python"))))
def test_python_example_runs(sidecar: RunningSidecar, index: int) -> None:
    code = readme_blocks("python")[index].replace(SIDECAR, sidecar.url)
    assert sidecar.url in code, "every example names the sidecar's address"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "sidecar_unreachable" not in run.stdout + run.stderr
