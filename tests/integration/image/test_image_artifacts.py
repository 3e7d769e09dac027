"""What `make image` leaves beside the image and in it: the OCI labels, the CycloneDX SBOM (the
same document inside the image and in dist/), and a `docker load` archive of exactly that image."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tomllib
from typing import Any

import pytest

from tests.integration.image.podman import DIST, ROOT, RUN_OPTIONS, built_image, inspect_image, podman

SBOM = DIST / "tiergate-image.cdx.json"
ARCHIVE = DIST / "tiergate-image.tar"


@pytest.fixture(scope="module")
def image() -> str:
    return built_image()


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_labels_name_the_version_revision_and_source(image: str) -> None:
    labels = inspect_image(image)["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == project_version()
    assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])
    revisions = subprocess.run(
        ["git", "rev-list", "--max-count=200", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert labels["org.opencontainers.image.revision"] in revisions  # this branch's, not another's
    assert labels["org.opencontainers.image.source"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_sbom_lists_the_images_environment_and_matches_the_one_beside_it(image: str) -> None:
    inside = podman("run", "--rm", *RUN_OPTIONS, "--entrypoint", "cat", image, "/opt/tiergate/sbom.cdx.json")
    bom: dict[str, Any] = json.loads(inside.stdout)
    assert json.loads(SBOM.read_text()) == bom
    assert bom["bomFormat"] == "CycloneDX"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("tiergate", project_version())
    names = {component["name"].lower() for component in bom["components"]}
    assert {"gordon-to-regorus", "aiohttp", "stripe", "pydantic"} <= names
    assert not names & {"cyclonedx-bom", "cyclonedx-python-lib"}  # the tool is not in the image


def test_the_archive_is_docker_load_compatible_and_holds_this_image(image: str) -> None:
    with tarfile.open(ARCHIVE) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    [entry] = manifest
    assert entry["Config"].removesuffix(".json").removeprefix("sha256:") == image.removeprefix("sha256:")
    assert entry["RepoTags"] and entry["Layers"]
