"""The proxy configurations the docs show are the files the integration tests run (deploy/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```nginx\n(.*?)^```", re.MULTILINE | re.DOTALL)
YAML_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
INGRESS_DOC = ROOT / "docs" / "ingress.md"


def shipped(kind: str) -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text() for path in (ROOT / "deploy" / kind).rglob("*.conf")
    }


def blocks(kind_fence: re.Pattern[str]) -> list[tuple[str, str]]:
    return [(doc.name, block) for doc in DOCS for block in kind_fence.findall(doc.read_text())]


@pytest.mark.parametrize(("doc", "block"), blocks(FENCE))
def test_every_nginx_block_in_the_docs_is_part_of_a_shipped_file(doc: str, block: str) -> None:
    files = shipped("nginx")
    assert any(block in text for text in files.values()), (
        f"{doc} shows an NGINX configuration that is in no file under deploy/nginx (which the tests run):\n{block}"
    )


def test_the_docs_show_the_nginx_configuration() -> None:
    assert len(blocks(FENCE)) >= 4


@pytest.mark.parametrize("block", YAML_FENCE.findall(INGRESS_DOC.read_text()))
def test_every_proxy_yaml_in_the_ingress_doc_is_part_of_a_shipped_file(block: str) -> None:
    files = [path.read_text() for path in (ROOT / "deploy").rglob("*.yaml")]
    assert any(block in text for text in files), (
        f"docs/ingress.md shows YAML that is in no file under deploy/:\n{block}"
    )


def test_the_ingress_doc_shows_traefik_and_envoy() -> None:
    assert len(YAML_FENCE.findall(INGRESS_DOC.read_text())) >= 2
