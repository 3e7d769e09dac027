"""Imports point one way: sidecar -> core <- sync daemon; the core imports no process, and the two
processes never import each other (lazy imports inside functions and TYPE_CHECKING blocks too)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "tiergate"
PROCESSES = ("tiergate.sidecar", "tiergate.sync_daemon")


def layer_of(module: str) -> str:
    """`tiergate.sidecar`, `tiergate.sync_daemon`, or `core` for everything else under tiergate/."""
    for process in PROCESSES:
        if module == process or module.startswith(process + "."):
            return process
    return "core"


def forbidden_layers(layer: str) -> tuple[str, ...]:
    """The process packages a module of LAYER may not import."""
    return tuple(p for p in PROCESSES if p != layer)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module SOURCE imports, anywhere in it (functions, TYPE_CHECKING blocks), with its line;
    `from x import y` yields both `x` and `x.y` (y may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    anchor = parts[: len(parts) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """`module:line imports target` for each import that goes against the direction."""
    banned = forbidden_layers(layer_of(module))
    found: dict[int, str] = {}
    for line, target in imported_modules(source, module, is_package=is_package):
        if layer_of(target) in banned:
            found.setdefault(line, f"{module}:{line} imports {target}")
    return list(found.values())


def tree_violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        found += violations(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    return found


def test_the_tree_keeps_the_direction() -> None:
    assert tree_violations() == []


def test_the_walk_reads_every_part_of_the_package() -> None:
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {
        "tiergate.cli",
        "tiergate.client.sync",
        "tiergate.sidecar.app",
        "tiergate.sync_daemon.app",
    } <= modules


CORE_BAD = {
    "top-level": "import tiergate.sidecar.app\n",
    "from-import": "from tiergate.sync_daemon.settings import DaemonSettings\n",
    "lazy": "def run() -> None:\n    from tiergate.sidecar.app import run\n    run()\n",
    "type-checking": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tiergate.sync_daemon import ops\n"
    ),
    "package-alias": "from tiergate import sidecar\n",
    "aliased": "import tiergate.sync_daemon as daemon\n",
}


@pytest.mark.parametrize("source", CORE_BAD.values(), ids=CORE_BAD.keys())
@pytest.mark.parametrize("module", ["tiergate.catalog", "tiergate.client.sync"])
def test_a_core_module_importing_a_process_is_caught(module: str, source: str) -> None:
    assert len(violations(source, module)) >= 1


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("tiergate.sidecar.app", "from tiergate.sync_daemon.feed import x\n"),
        ("tiergate.sync_daemon.app", "def f():\n    import tiergate.sidecar.local\n"),
        ("tiergate.sidecar.replica.store", "from ...sync_daemon import ops\n"),
        ("tiergate.sync_daemon.mirror.sqlite", "from ...sidecar.decisions import service\n"),
    ],
)
def test_a_process_importing_the_other_is_caught(module: str, source: str) -> None:
    assert violations(source, module) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("tiergate.catalog", "from tiergate.errors import CatalogError\nimport tiergate.models\n"),
        ("tiergate.sidecar.app", "from tiergate.sidecar.replica import store\nfrom tiergate import web\n"),
        ("tiergate.sync_daemon.app", "from .mirror import sqlite\nfrom ..feed import Change\n"),
        ("tiergate.client.sync", "from tiergate.client import calls\nimport sidecar_helpers\n"),
    ],
)
def test_imports_in_the_right_direction_pass(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_a_relative_import_is_resolved_from_its_package() -> None:
    source = "from .sync_daemon import ops\n"
    # In tiergate/__init__.py `.` is tiergate; in tiergate/sidecar/__init__.py it is the sidecar.
    assert violations(source, "tiergate", is_package=True) == ["tiergate:1 imports tiergate.sync_daemon"]
    assert violations(source, "tiergate.sidecar", is_package=True) == []
    assert violations("from ..sync_daemon import ops\n", "tiergate.sidecar.local") == [
        "tiergate.sidecar.local:1 imports tiergate.sync_daemon"
    ]
