"""Every status a route can answer is in its OpenAPI document, successes included, and a 405
says which methods work.

The statuses come from the code (tests/integration/openapi_statuses.py reads each handler, each
wrapper around it and what they call), plus what every route can answer whatever its handler: the
middleware's 400 (a header that is not UTF-8) and the router's 405 (another method; not for a
route taking any). The sidecar's GET /v1/check also answers on the check listener, which speaks
HTTP itself: its module's statuses count for that route. A 500 is a bug, never documented.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.openapi_statuses import handler_statuses, middleware_statuses, module_statuses
from tests.integration.sidecar.conftest import SidecarClient
from tests.integration.test_openapi import ROOT, daemon_app
from tiergate.sidecar.api import check_listener
from tiergate.sidecar.api.check import load_openapi as sidecar_openapi
from tiergate.sidecar.api.listeners import AUTHZ_LISTENER_PATHS, DIAGNOSTICS_PATHS
from tiergate.sidecar.app import create_app as create_sidecar
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.ops import load_openapi as daemon_openapi

Operation = tuple[str, str]  # (OpenAPI path, method)
UNDOCUMENTED = {500}  # an unhandled error: a bug, logged with its traceback
PROBE_METHOD = "PATCH"  # no route of either process takes it


def openapi_path(route: web.AbstractRoute) -> str:
    info = route.resource.get_info() if route.resource is not None else {}
    raw = info.get("path") or info.get("formatter") or ""
    return re.sub(
        r"\{(\w+)(:[^}]*)?\}", lambda m: "{path}" if m.group(1) == "tail" else "{" + m.group(1) + "}", raw
    )


def answerable(app: web.Application) -> dict[Operation, set[int]]:
    """Each operation's error statuses, as the code can answer them."""
    everywhere = middleware_statuses(app)
    found: dict[Operation, set[int]] = {}
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD to every GET
            continue
        if getattr(route.handler, "__name__", "") == "unrouted":
            continue  # the sidecar's last route: the JSON 404/405 for what no route takes
        statuses = handler_statuses(route.handler) | everywhere
        if route.method != "*":
            statuses.add(web.HTTPMethodNotAllowed.status_code)
        method = "get" if route.method == "*" else route.method.lower()
        found[(openapi_path(route), method)] = statuses - UNDOCUMENTED
    return found


def sidecar_answerable() -> dict[Operation, set[int]]:
    """The main port's routes, and GET /v1/check's answers on the check listener (TIERGATE_CHECK_PORT).

    `guarded`'s listener refusal is a 404 on the restricted listeners for what they do not serve,
    so never for the paths every listener serves (health and readiness)."""
    found = answerable(create_sidecar(SidecarSettings()))
    found[CHECK_GET] = found[CHECK_GET] | (module_statuses(check_listener) - UNDOCUMENTED)
    for path in SERVED_ON_EVERY_LISTENER:
        found[(path, "get")].discard(web.HTTPNotFound.status_code)
    return found


SERVED_ON_EVERY_LISTENER = set(AUTHZ_LISTENER_PATHS) & DIAGNOSTICS_PATHS


CHECK_GET: Operation = ("/v1/check", "get")


def documented(document: dict[str, Any], operation: Operation) -> set[int]:
    path, method = operation
    return {int(status) for status in document["paths"][path][method]["responses"] if str(status).isdigit()}


APPS: list[tuple[str, Callable[[], dict[Operation, set[int]]], Callable[[], dict[str, Any]]]] = [
    ("sidecar", sidecar_answerable, sidecar_openapi),
    ("daemon", lambda: answerable(daemon_app()), daemon_openapi),
]


@pytest.mark.parametrize(("statuses_of", "load"), [(m, d) for _, m, d in APPS], ids=[n for n, _, _ in APPS])
def test_every_status_a_route_can_answer_is_documented(
    statuses_of: Callable[[], dict[Operation, set[int]]], load: Callable[[], dict[str, Any]]
) -> None:
    missing = undocumented(statuses_of(), load())
    assert missing == {}, "statuses the code can answer, missing from the OpenAPI document"


def undocumented(found: dict[Operation, set[int]], document: dict[str, Any]) -> dict[str, list[int]]:
    """`METHOD path` -> the statuses it can answer that its document lacks."""
    return {
        f"{method.upper()} {path}": sorted(statuses - documented(document, (path, method)))
        for (path, method), statuses in found.items()
        if statuses - documented(document, (path, method))
    }


def test_a_status_left_out_of_the_document_is_reported() -> None:
    """The comparison can fail: a success, a listener's own and a guard's status each count."""
    document = copy.deepcopy(sidecar_openapi())
    for path, method, status in [
        ("/v1/usage", "post", "202"),
        ("/v1/check", "get", "431"),
        ("/v1/status", "get", "404"),
    ]:
        del document["paths"][path][method]["responses"][status]
    assert undocumented(sidecar_answerable(), document) == {
        "POST /v1/usage": [202],
        "GET /v1/check": [431],
        "GET /v1/status": [404],
    }


def test_the_analysis_finds_what_the_code_raises() -> None:
    """The floor is real: known statuses of known routes are found (the test can fail)."""
    sidecar = answerable(create_sidecar(SidecarSettings()))
    daemon = answerable(daemon_app())
    assert {400, 405, 503} <= sidecar[("/v1/check", "get")]  # 503: TIERGATE_NOT_READY_ANSWER=unavailable
    assert {200, 408, 414, 431} <= sidecar_answerable()[CHECK_GET]  # the check listener's own
    assert {202, 404} <= sidecar[("/v1/usage", "post")]  # a success, and `guarded`'s listener refusal
    assert 201 in daemon[("/v1/checkout/sessions", "post")]
    assert 405 not in sidecar[("/v1/authz", "get")]  # any method is the ingress hook's
    assert {401, 410} <= daemon[("/v1/feed/changes", "get")]
    assert 413 in daemon[("/webhooks/stripe", "post")]  # the raw body, over TIERGATE_MAX_BODY_BYTES
    assert 413 not in sidecar[("/v1/check", "post")]  # read_json_object answers 400 instead
    assert {401, 404} <= daemon[("/v1/usage/events/{transaction_id}", "get")]


def methods_of(document: dict[str, Any], url: str) -> set[str]:
    """The methods of every documented path `url` matches (`/v1/usage/batch` is also a tenant)."""
    found: set[str] = set()
    for path, item in document["paths"].items():
        if re.fullmatch(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)), url):
            found |= {m.upper() for m in item if m in {"get", "post", "put", "patch", "delete"}}
    return found


async def assert_405s_carry_allow(client: Any, document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        if "{path}" in path:
            continue  # the ingress hook's catch-all takes any method
        url = re.sub(r"\{\w+\}", "x", path)
        response = await client.request(PROBE_METHOD, url)
        assert response.status == 405, f"{PROBE_METHOD} {url}"
        allowed = {m.strip() for m in response.headers["Allow"].split(",")} - {"HEAD"}
        assert allowed == methods_of(document, url), path
        assert (await response.json())["error"]["code"] == "method_not_allowed"
        assert "MethodNotAllowed" in str(item), f"{path}: the 405 is documented with its Allow header"


async def test_sidecar_405s_carry_allow(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = SidecarSettings(
        replica_path=tmp_path / "replica.db", plans=ROOT / "plans" / "plans.yaml", policies=ROOT / "policies"
    )
    client: SidecarClient = await aiohttp_client(create_sidecar(settings))
    document = copy.deepcopy(sidecar_openapi())
    del document["paths"]["/v1/authz"]  # any method
    await assert_405s_carry_allow(client, document)


async def test_daemon_405s_carry_allow(aiohttp_client: Any) -> None:
    await assert_405s_carry_allow(await aiohttp_client(daemon_app()), daemon_openapi())
