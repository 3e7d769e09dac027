"""Every PolicyEngine adapter behind one fixture, plus bundles built from a test tier policy."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.opa_double import create_opa_double
from tiergate.catalog import parse_catalog
from tiergate.policy.bundle import bundle_revision
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH, PolicyBundle, PolicyEngine
from tiergate.sidecar.policy.opa_server import OpaServerEngine

HERE = Path(__file__).parent
TIER_REGO = (HERE / "rego" / "tier.rego").read_text()
PLANS_YAML = """\
default_tier: free
metrics:
  api_calls: {aggregation: count}
tiers:
  free: {rank: 0, features: {api_calls: {limit: 1000}, sso: false, seats: {limit: 3}}}
  pro: {rank: 10, grace_days: 7, features: {api_calls: {limit: 100000}, sso: true, seats: {limit: 25}}}
  enterprise: {rank: 20, features: {api_calls: {}, sso: true, seats: {}}}
"""
ENGINE_KINDS = ("embedded", "compiled", "opa-double", "opa-binary")
OPA_START_S = 15.0

ServerFactory = Callable[..., Awaitable[TestServer]]


def make_bundle(modules: dict[str, str] | None = None, plans_yaml: str = PLANS_YAML) -> PolicyBundle:
    modules = {"tier.rego": TIER_REGO} if modules is None else modules
    return PolicyBundle(
        modules=modules,
        catalog=parse_catalog(plans_yaml),
        revision=bundle_revision(modules, plans_yaml),
    )


def tier_input(**overrides: Any) -> dict[str, Any]:
    """The sidecar's input document (DESIGN.md), a pro tenant in good standing by default."""
    document: dict[str, Any] = {
        "tenant": "t_42",
        "feature": "api_calls",
        "quantity": 1,
        "now": "2026-11-24T10:00:00Z",
        "account": {
            "tier": "pro",
            "status": "active",
            "current_period_end": "2026-12-01T00:00:00Z",
            "trial_end": None,
            "quantity": 5,
            "cancel_at_period_end": False,
            "past_due_since": None,
        },
        "usage": {"api_calls": 1234},
        "replica": {"age_seconds": 0.4},
    }
    account = overrides.pop("account", {})
    document.update(overrides)
    document["account"] = {**document["account"], **account}
    return document


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(params=ENGINE_KINDS)
def engine_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def engine(engine_kind: str, aiohttp_server: ServerFactory) -> AsyncIterator[PolicyEngine]:
    """A fresh, opened adapter of each kind, with nothing loaded; `required` is the decision only."""
    async with _opa_url(engine_kind, aiohttp_server) as url:
        adapter = _adapter(engine_kind, url)
        try:
            yield adapter
        finally:
            await adapter.close()


@pytest.fixture
async def unavailable_engine(engine_kind: str) -> AsyncIterator[PolicyEngine]:
    """An adapter that cannot answer: embedded with nothing loaded, OPA on a port nobody serves."""
    adapter = _adapter(engine_kind, f"http://127.0.0.1:{free_port()}")
    try:
        yield adapter
    finally:
        await adapter.close()


def _adapter(kind: str, url: str | None) -> PolicyEngine:
    if kind in ("embedded", "compiled"):
        return EmbeddedEngine(compiled=kind == "compiled", required=(DECISION_PATH,))
    assert url is not None
    return OpaServerEngine(url, timeout_s=2.0, required=(DECISION_PATH,))


@asynccontextmanager
async def _opa_url(kind: str, aiohttp_server: ServerFactory) -> AsyncIterator[str | None]:
    """None for embedded kinds; the test double's URL; a real `opa run --server`'s URL."""
    if kind == "opa-double":
        server = await aiohttp_server(create_opa_double(), host="127.0.0.1")
        yield str(server.make_url("/"))
    elif kind == "opa-binary":
        async with _opa_process() as url:
            yield url
    else:
        yield None


@asynccontextmanager
async def _opa_process() -> AsyncIterator[str]:
    opa = shutil.which("opa")
    if opa is None:
        pytest.skip("no opa binary on PATH: OpaServerEngine is covered against tests/opa_double.py only")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        opa,
        "run",
        "--server",
        f"--addr=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        await _wait_healthy(url)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def _wait_healthy(url: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPA_START_S
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            try:
                async with session.get(f"{url}health") as response:
                    if response.status == 200 and json.loads(await response.read()) == {}:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"opa at {url} did not become healthy within {OPA_START_S}s")
