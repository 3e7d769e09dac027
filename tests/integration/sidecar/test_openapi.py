"""The OpenAPI document served at /openapi.json matches the routes the app really has."""

from __future__ import annotations

import re

from sidecar.app import create_app
from sidecar.routes import load_openapi
from sidecar.settings import SidecarSettings
from tests.integration.sidecar.conftest import SidecarClient


def app_paths() -> set[str]:
    app = create_app(SidecarSettings())
    paths = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or ""
        paths.add(
            re.sub(
                r"\{(\w+)(:[^}]*)?\}",
                lambda m: "{" + ("path" if m.group(1) == "tail" else m.group(1)) + "}",
                path,
            )
        )
    return paths


def test_every_route_is_documented_and_nothing_else() -> None:
    assert app_paths() == set(load_openapi()["paths"])


async def test_served_document_is_openapi_3_1(client: SidecarClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
