"""Reads the lock files (requirements/*.txt, as `make lock` writes them) into pins, for the tests."""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
REQUIREMENTS = ROOT / "requirements"
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^ ;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
VIA = re.compile(r"^\s+#\s+(?:via\s+)?(?P<parent>\S.*)$")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    marker: Marker | None
    hashes: frozenset[str]
    via: tuple[str, ...]  # what requires it, as uv annotates: a package, or "tiergate (pyproject.toml)"


def read_lock(path: Path) -> dict[str, Pin]:
    """Every pin of one lock file, by canonical name."""
    pins: dict[str, Pin] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        found = PIN.match(line)
        if found is None:
            continue
        block = lines[index + 1 : next_pin(lines, index + 1)]
        marker = found["marker"]
        pins[canonicalize_name(found["name"])] = Pin(
            name=canonicalize_name(found["name"]),
            version=found["version"],
            marker=Marker(marker) if marker else None,
            hashes=frozenset(h for b in block for h in HASH.findall(b)),
            via=tuple(p for b in block if (v := VIA.match(b)) and (p := v["parent"].strip()) != "via"),
        )
    return pins


def next_pin(lines: list[str], start: int) -> int:
    return next((i for i in range(start, len(lines)) if PIN.match(lines[i])), len(lines))


def project(path: Path) -> dict[str, object]:
    """The [project] table of a pyproject.toml."""
    table: dict[str, object] = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    return table


def requirements(path: Path, *extras: str) -> list[Requirement]:
    """A pyproject's dependencies, and those of the extras named."""
    table = project(path)
    listed = [str(r) for r in table.get("dependencies", [])]  # type: ignore[attr-defined]  # a TOML list
    optional: dict[str, list[str]] = table.get("optional-dependencies", {})  # type: ignore[assignment]  # a TOML table
    return [Requirement(r) for r in [*listed, *(r for e in extras for r in optional[e])]]


def client_files() -> tuple[str, ...]:
    """The files tiergate-client owns, as clients/python/hatch_build.py lists them."""
    tree = ast.parse((ROOT / "clients" / "python" / "hatch_build.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CLIENT_FILES":
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("clients/python/hatch_build.py lists no CLIENT_FILES")
