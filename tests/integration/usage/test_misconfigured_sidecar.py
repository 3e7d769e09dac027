"""A sidecar set up wrong says so: a refused feed token is an authentication failure naming
TIERGATE_FEED_TOKEN (not an outage), and static mode (no daemon) is announced with its backlog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.integration.sidecar.conftest import SidecarClient
from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarFactory,
    events,
    eventually,
    sidecar_settings,
)
from tiergate.sidecar.app import create_app as create_sidecar


async def status(client: SidecarClient) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/status")).json()
    return body


async def test_a_refused_feed_token_is_an_authentication_failure(
    aiohttp_client: Any, tmp_path: Path, daemon: DaemonServer
) -> None:
    settings = sidecar_settings(tmp_path, daemon.url, feed_token=SecretStr("an-old-token-0123456789"))
    with capture_logs() as logs:
        client: SidecarClient = await aiohttp_client(create_sidecar(settings))
        accepted = await client.post("/v1/usage/batch", json={"events": events("acme", 1)})
        assert accepted.status == 202

        async def both_failed() -> bool:
            body = await status(client)
            return bool(body["daemon"]["last_error"] and body["usage"]["delivery"]["last_error"])

        await eventually(both_failed)
    body = await status(client)
    for error in (body["daemon"]["last_error"], body["usage"]["delivery"]["last_error"]):
        assert "authentication failed: the daemon answered 401" in error
        assert "does not accept this sidecar's TIERGATE_FEED_TOKEN" in error
    names = {entry["event"] for entry in logs}
    assert {"daemon_auth_failed", "usage_delivery_auth_failed"} <= names
    assert "daemon_unreachable" not in names
    assert body["usage"]["backlog"] == 1  # kept, to be delivered once the token is fixed


async def test_static_mode_is_announced_and_its_backlog_warned_about(make_sidecar: SidecarFactory) -> None:
    with capture_logs() as logs:
        client = await make_sidecar(None)
        started = [entry["warning"] for entry in logs if entry["event"] == "static_mode"]
        for n in range(12):
            await client.post("/v1/usage", json={"event": events("acme", 1, prefix=f"e{n}-")[0]})
    assert started[0].startswith("no TIERGATE_DAEMON_URL: static mode")
    assert any("the replica is empty: every tenant gets the catalog's default tier" in w for w in started)
    warned = [entry["backlog"] for entry in logs if entry["event"] == "usage_undelivered"]
    assert warned == [1, 10]
    body = await status(client)
    assert body["mode"] == "static" and body["daemon"] is None
    assert any(w.startswith("12 accepted usage events are in the outbox") for w in body["warnings"])


async def test_a_following_sidecar_has_no_static_warnings(
    make_sidecar: SidecarFactory, daemon: DaemonServer
) -> None:
    body = await status(await make_sidecar(daemon.url))
    assert (body["mode"], body["warnings"]) == ("following", [])
