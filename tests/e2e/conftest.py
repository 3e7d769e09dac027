"""The whole stack as real processes on 127.0.0.1: localstripe, `tiergate sync-daemon`, `tiergate sidecar`.

Each process logs to a file under the test's tmp directory; a failing test prints every log's
tail, and teardown always stops every process it started (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe

from demo.processes import Process, free_port, tiergate_command
from tests.localstripe_api import plans_client
from tests.stripe_payloads import SECRET

ROOT = Path(__file__).resolve().parents[2]
FEED_TOKEN = "feed-token-for-e2e"
STRIPE_KEY = "sk_test_e2e"
STALENESS_BUDGET_S = 2
RECONCILE_INTERVAL_S = 2
DEADLINE_S = 30.0


# -- localstripe: one process per module, emptied per test --------------------------------------


@pytest.fixture(scope="module")
def localstripe_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("localstripe")
    port = free_port()
    process = Process(
        "localstripe",
        [sys.executable, str(ROOT / "tests" / "localstripe_server.py"), str(port)],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
        tmp / "localstripe.log",
        tmp,
    )
    process.start()
    try:
        process.wait_http(f"http://127.0.0.1:{port}/", lambda status: True)  # 401 without a key: up
        process.env["URL"] = f"http://127.0.0.1:{port}"
        yield process
    finally:
        process.stop()


@dataclass
class Stack:
    """localstripe (shared), plus this test's daemon and sidecar, their ports and files."""

    tmp: Path
    localstripe: Process
    daemon: Process
    sidecar: Process
    daemon_port: int
    sidecar_port: int
    extra_logs: list[Process] = field(default_factory=list)

    @property
    def stripe_url(self) -> str:
        return self.localstripe.env["URL"]

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    def start_daemon(self) -> None:
        self.daemon.start()
        self.daemon.wait_http(self.daemon_url + "/healthz", lambda status: status == 200)

    def start_sidecar(self, *, wait_ready: bool = True) -> None:
        self.sidecar.start()
        if wait_ready:
            self.sidecar.wait_http(self.sidecar_url + "/readyz", lambda status: status == 200)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in (self.daemon, self.sidecar, self.localstripe))


def register_webhook(stripe_url: str, target: str, secret: str = SECRET) -> None:
    """localstripe's own endpoint registration (it has no /v1/webhook_endpoints)."""
    request = urllib.request.Request(
        stripe_url + "/_config/webhooks/tiergate",
        data=json.dumps({"url": target, "secret": secret}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def reset_localstripe(stripe_url: str) -> None:
    request = urllib.request.Request(stripe_url + "/_config/data", method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(FAILED, False)
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
def stack(localstripe_process: Process, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    stripe_url = localstripe_process.env["URL"]
    reset_localstripe(stripe_url)
    daemon_port, sidecar_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    common = {**base, "PYTHONUNBUFFERED": "1", "TIERGATE_LOG_JSON": "false", "TIERGATE_LOG_LEVEL": "info"}
    daemon_env = {
        **common,
        "TIERGATE_STRIPE_API_KEY": STRIPE_KEY,
        "TIERGATE_STRIPE_API_BASE": stripe_url,
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_STRIPE_MAX_NETWORK_RETRIES": "0",
        "TIERGATE_STRIPE_TIMEOUT_S": "5",
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_MIRROR_PATH": str(tmp_path / "mirror.db"),
        "TIERGATE_DAEMON_HOST": "127.0.0.1",
        "TIERGATE_DAEMON_PORT": str(daemon_port),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
    }
    sidecar_env = {
        **common,
        "TIERGATE_DAEMON_URL": f"http://127.0.0.1:{daemon_port}",
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_REPLICA_PATH": str(tmp_path / "replica.db"),
        "TIERGATE_STALENESS_BUDGET_S": str(STALENESS_BUDGET_S),
        "TIERGATE_SIDECAR_HOST": "127.0.0.1",
        "TIERGATE_SIDECAR_PORT": str(sidecar_port),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_DECISION_LOG_SAMPLE": "0",
        "TIERGATE_DECISION_LOG_DENIES": "false",
        # Decisions must reflect the replica as soon as it changes: no cached answers.
        "TIERGATE_DECISION_CACHE_SIZE": "0",
    }
    the_stack = Stack(
        tmp=tmp_path,
        localstripe=localstripe_process,
        daemon=Process(
            "sync-daemon", tiergate_command("sync-daemon"), daemon_env, tmp_path / "daemon.log", tmp_path
        ),
        sidecar=Process(
            "sidecar", tiergate_command("sidecar"), sidecar_env, tmp_path / "sidecar.log", tmp_path
        ),
        daemon_port=daemon_port,
        sidecar_port=sidecar_port,
    )
    register_webhook(stripe_url, the_stack.daemon_url + "/webhooks/stripe")
    try:
        yield the_stack
    finally:
        the_stack.sidecar.stop()
        the_stack.daemon.stop()
        if request.node.stash.get(FAILED, False):
            print(the_stack.logs())  # shown in the failure report's captured stdout


# -- clients ----------------------------------------------------------------------------------


@pytest.fixture
async def stripe_api(stack: Stack) -> AsyncIterator[stripe.StripeClient]:
    """An async Stripe client on localstripe, with one Product and a Plan per catalog lookup key."""
    async with plans_client(stack.stripe_url, STRIPE_KEY, "tiergate-e2e") as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with session.get(url, params=params) as response:
        body: dict[str, Any] = await response.json()
        body["_status"] = response.status
        return body


async def eventually(
    predicate: Callable[[], Awaitable[bool]], what: str, stack: Stack, timeout_s: float = DEADLINE_S
) -> None:
    """Poll until true; a generous deadline, never a latency assertion. A timeout shows the logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await predicate():
                return
        except (aiohttp.ClientError, TimeoutError):
            pass  # a process between lives: keep polling
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}\n{stack.logs()}")
