"""tiergate-client owns exactly tiergate/client and the core modules it imports; the server wheel
leaves those same files out (docs/adr/0027-client-distribution.md)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from tests.lockfile import ROOT, client_files

PACKAGE = ROOT / "tiergate"


def module_path(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def tiergate_imports(path: Path) -> set[str]:
    """The tiergate modules one file imports (at any depth of the file, TYPE_CHECKING included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tiergate"):
            found.add(node.module)
            found.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if module_path(f"{node.module}.{a.name}").exists()
            )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tiergate"))
    return found


def closure(start: set[str]) -> set[str]:
    """Every tiergate module reachable from `start`, with the packages that hold them."""
    seen: set[str] = set()
    todo = set(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.update(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.update(tiergate_imports(module_path(module)))
    return seen


def owned_modules() -> set[str]:
    modules: set[str] = set()
    for name in client_files():
        path = ROOT / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.suffix == ".py" else []
        modules.update(
            ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for f in files
        )
    return modules


def test_the_client_owns_exactly_what_its_modules_import() -> None:
    clients = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (PACKAGE / "client").glob("*.py")}
    reached = closure({c.removesuffix(".__init__") for c in clients})
    assert reached == owned_modules()


def test_the_client_imports_nothing_of_the_processes() -> None:
    assert not {m for m in owned_modules() if m.startswith(("tiergate.sidecar", "tiergate.sync_daemon"))}


def test_the_server_wheel_excludes_exactly_the_clients_files() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert tuple(config["tool"]["hatch"]["build"]["targets"]["wheel"]["exclude"]) == client_files()


@pytest.mark.parametrize("client", ["python", "typescript"])
def test_the_clients_ship_the_projects_license(client: str) -> None:
    """clients/*/LICENSE are copies (a package cannot hold a link out of its own folder)."""
    assert (ROOT / "clients" / client / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
