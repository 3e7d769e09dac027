"""Both OpenAPI documents list exactly the routes and methods the apps serve, and are served."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from tiergate.sidecar.api.check import load_openapi as sidecar_openapi
from tiergate.sidecar.app import create_app as create_sidecar
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.app import create_app as create_daemon
from tiergate.sync_daemon.ops import load_openapi as daemon_openapi
from tiergate.sync_daemon.settings import DaemonSettings

ROOT = Path(__file__).parents[2]
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def daemon_app() -> web.Application:
    settings = DaemonSettings(
        stripe_api_key=SecretStr("sk_test_x"),
        stripe_webhook_secret=SecretStr("whsec_test_0123456789"),
        feed_token=SecretStr("feed-token-for-tests-0001"),
        plans=ROOT / "plans" / "plans.yaml",
    )
    return create_daemon(settings)


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every route; a catch-all `{tail:.*}` is documented as `{path}`."""
    found = set()
    for route in app.router.routes():
        if getattr(route.handler, "__name__", "") == "unrouted":
            continue  # the sidecar's last route: the JSON 404/405 for what no route takes
        info = route.resource.get_info() if route.resource is not None else {}
        raw = info.get("path") or info.get("formatter") or ""
        path = re.sub(
            r"\{(\w+)(:[^}]*)?\}", lambda m: "{path}" if m.group(1) == "tail" else "{" + m.group(1) + "}", raw
        )
        if route.method != "HEAD":  # aiohttp adds HEAD to every GET
            found.add((path, route.method.lower()))
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


@pytest.mark.parametrize(
    ("make_app", "load"),
    [(lambda: create_sidecar(SidecarSettings()), sidecar_openapi), (daemon_app, daemon_openapi)],
    ids=["sidecar", "daemon"],
)
def test_every_route_is_documented_and_nothing_else(
    make_app: Callable[[], web.Application], load: Callable[[], dict[str, Any]]
) -> None:
    document = load()
    assert document["openapi"].startswith("3.1")
    served = routes(make_app())
    # A route taking any method ("*") is documented once, under GET.
    expected = {(path, "get" if method == "*" else method) for path, method in served}
    assert expected == documented(document)


async def test_the_daemon_serves_its_document(aiohttp_client: Any) -> None:
    client = await aiohttp_client(daemon_app())
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert (await response.json())["info"]["title"] == "tiergate sync daemon"
