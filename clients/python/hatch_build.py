"""Puts the client's modules, which live in the repository's tiergate/, into tiergate-client's sdist and wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# tiergate/client and exactly the core modules it imports (tests/unit/test_distributions.py checks).
CLIENT_FILES = (
    "tiergate/__init__.py",
    "tiergate/amounts.py",
    "tiergate/errors.py",
    "tiergate/models.py",
    "tiergate/py.typed",
    "tiergate/client",
)


class ClientFilesHook(BuildHookInterface):  # type: ignore[type-arg]  # hatchling's generic is untyped
    """From the repository, force-include the client's files; from the sdist they are already in place."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        repository = Path(self.root).parents[1]
        if version == "editable":
            return  # an editable install puts the repository root on sys.path instead (dev-mode-dirs)
        if (Path(self.root) / "tiergate").is_dir():
            return  # building from the sdist, which holds the files itself
        for name in CLIENT_FILES:
            build_data["force_include"][str(repository / name)] = name
