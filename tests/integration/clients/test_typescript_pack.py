"""`npm pack` of clients/typescript holds the built client, its types, README and LICENSE, nothing
else, and the tarball installs into a fresh npm project whose code imports both entry points."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

from tests.integration.clients.test_typescript_client import PACKAGE, node

NPM = ["npm", "--no-audit", "--no-fund", "--loglevel=error"]
SHIPPED = {
    "package.json",
    "README.md",
    "LICENSE",
    *(f"dist/src/{m}.{ext}" for m in ("index", "express", "openapi") for ext in ("js", "d.ts")),
}


def test_the_tarball_holds_the_built_client_and_installs(tmp_path: Path) -> None:
    node()  # the client is built (make typescript)
    pack = subprocess.run(
        [*NPM, "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pack.returncode == 0, pack.stderr
    tarball = tmp_path / json.loads(pack.stdout)[0]["filename"]
    with tarfile.open(tarball) as archive:
        assert {n.removeprefix("package/") for n in archive.getnames()} == SHIPPED
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}', encoding="utf-8")
    install = subprocess.run(
        [*NPM, "install", "--offline", str(tarball)], cwd=app, capture_output=True, text=True, timeout=120
    )
    assert install.returncode == 0, install.stderr
    code = (
        'import { TiergateClient } from "@tiergate/client"; import { requireFeature } from "@tiergate/client/express";'
        "console.log(typeof TiergateClient, typeof requireFeature);"
    )
    run = subprocess.run(
        [node(), "--input-type=module", "-e", code], cwd=app, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["function", "function"]
