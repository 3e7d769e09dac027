"""The built image, run for real with podman: a daemon container and a sidecar container following
it, each with a read-only root and its state on a volume, as UID 10001. A signed Stripe webhook
sent to the daemon changes the sidecar's answer, usage recorded at the sidecar reaches the daemon,
and the image's HEALTHCHECK passes for both roles."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from demo.processes import free_port
from tests.integration.image.podman import DEADLINE_S, UID, Container, built_image, podman
from tests.stripe_payloads import SECRET, signed, subscription_event

FEED_TOKEN = "feed-token-for-the-image"
AUTH = {"Authorization": f"Bearer {FEED_TOKEN}"}
TENANT = "t_image"


@dataclass
class Stack:
    daemon: Container
    sidecar: Container
    daemon_url: str
    sidecar_url: str

    def logs(self) -> str:
        return self.daemon.logs() + "\n" + self.sidecar.logs()


def daemon_container(image: str, name: str, port: int) -> Container:
    """Stripe is never called: no reconcile at start, no re-fetch of webhook objects."""
    env = {
        "TIERGATE_DAEMON_HOST": "127.0.0.1",
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_STRIPE_API_KEY": "sk_test_image",
        "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
        "TIERGATE_STRIPE_REFETCH": "false",
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
    }
    return Container(f"{name}-daemon", image, ["sync-daemon"], env)


def sidecar_container(image: str, name: str, port: int, daemon_url: str) -> Container:
    env = {
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_DAEMON_URL": daemon_url,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_DECISION_CACHE_SIZE": "0",  # answers follow the replica at once
    }
    return Container(f"{name}-sidecar", image, ["sidecar"], env)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    image = built_image()
    name = f"tiergate-test-{uuid.uuid4().hex[:8]}"
    daemon_port, sidecar_port = free_port(), free_port()
    daemon_url = f"http://127.0.0.1:{daemon_port}"
    daemon = daemon_container(image, name, daemon_port)
    sidecar = sidecar_container(image, name, sidecar_port, daemon_url)
    the_stack = Stack(daemon, sidecar, daemon_url, f"http://127.0.0.1:{sidecar_port}")
    try:
        daemon.start()
        daemon.wait_http(daemon_url + "/readyz", lambda status: status == 200)
        sidecar.start()
        sidecar.wait_http(the_stack.sidecar_url + "/readyz", lambda status: status == 200)
        yield the_stack
    finally:
        sidecar.stop()
        daemon.stop()


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def eventually(probe: Callable[[], bool], what: str, stack: Stack) -> None:
    """Poll until true; a generous bound, never a latency assertion. A timeout shows the logs."""
    deadline = time.monotonic() + DEADLINE_S
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S:.0f} s: {what}\n{stack.logs()}")
        time.sleep(0.2)


def decision(stack: Stack, feature: str) -> dict[str, Any]:
    answer: dict[str, Any] = call("GET", f"{stack.sidecar_url}/v1/check?tenant={TENANT}&feature={feature}")
    return answer


def test_a_signed_webhook_at_the_daemon_changes_the_sidecars_answer(stack: Stack) -> None:
    before = decision(stack, "sso")
    assert (before["allow"], before["reason"], before["tier"]) == (False, "not_in_plan", "free")
    raw, headers = signed(subscription_event("customer.subscription.created", tenant=TENANT))
    assert call("POST", stack.daemon_url + "/webhooks/stripe", raw.encode(), headers) is not None
    eventually(lambda: decision(stack, "sso")["allow"] is True, "the sidecar allows sso on pro", stack)
    assert decision(stack, "sso")["tier"] == "pro"


def test_usage_recorded_at_the_sidecar_reaches_the_daemon(stack: Stack) -> None:
    prefix = uuid.uuid4().hex[:8]
    for index in range(3):
        event = {"transaction_id": f"{prefix}-{index}", "external_customer_id": TENANT, "code": "exports"}
        body = json.dumps({"event": event}).encode()
        call("POST", stack.sidecar_url + "/v1/usage", body, {"Content-Type": "application/json"})

    def daemon_counted() -> bool:
        usage = call("GET", f"{stack.daemon_url}/v1/usage/{TENANT}", headers=AUTH)["usage"]
        return bool(usage.get("exports") == 3)

    eventually(daemon_counted, "the daemon counts the sidecar's 3 exports", stack)
    assert decision(stack, "exports")["used"] == 3


@pytest.mark.parametrize("role", ["daemon", "sidecar"])
def test_runs_as_uid_10001_on_a_read_only_root(stack: Stack, role: str) -> None:
    container: Container = getattr(stack, role)
    status = container.exec("cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(UID)] * 4  # real, effective, saved, filesystem
    assert (
        podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container.name).stdout.strip()
        == "true"
    )
    for path in ("/opt/tiergate/written", "/tmp/written"):
        refused = container.exec("touch", path)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, path
    assert container.exec("touch", "/var/lib/tiergate/written").returncode == 0


@pytest.mark.parametrize("role", ["daemon", "sidecar"])
def test_the_healthcheck_passes(stack: Stack, role: str) -> None:
    container: Container = getattr(stack, role)
    result = podman("healthcheck", "run", container.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr + container.logs()
    state = podman("inspect", "--format", "{{.State.Health.Status}}", container.name).stdout.strip()
    assert state == "healthy"


def test_tracing_is_installed_and_envoys_protos_are_not(stack: Stack) -> None:
    """The image holds the otel extra (OTLP tracing needs no rebuild) and no xds-protos: the sidecar
    declares the ext_authz messages it needs (docs/adr/0029)."""
    traced = "from tiergate.tracing import Tracing; Tracing('sync-daemon', 'http://127.0.0.1:9/v1/traces')"
    result = stack.daemon.exec("python", "-c", traced)
    assert result.returncode == 0, result.stderr
    absent = "import importlib.util as u; print([m for m in ('envoy', 'xds', 'udpa') if u.find_spec(m)])"
    assert stack.daemon.exec("python", "-c", absent).stdout.strip() == "[]"
