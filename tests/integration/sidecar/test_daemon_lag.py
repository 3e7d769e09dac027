"""Staleness includes the lag the daemon reports: a sidecar in touch with a daemon whose mirror
has not been reconciled with Stripe for longer than the budget says its data is stale, and says
why (status and metrics show both parts of the age)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.daemon.conftest import AUTH, FakeStripe
from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tests.integration.sidecar.test_replica_damage_at_run_time import account, metric, status
from tests.integration.usage.conftest import eventually, sidecar_settings, start_daemon
from tiergate.sidecar.app import create_app
from tiergate.sync_daemon.state import RECONCILER

BUDGET_S = 1.0


async def test_the_daemons_mirror_lag_adds_to_the_replica_age(
    aiohttp_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    stripe = FakeStripe()
    server = await aiohttp_server(stripe.app())
    stripe.url = str(server.make_url("")).rstrip("/")
    daemon = await start_daemon(tmp_path, stripe_api_base=stripe.url)
    try:
        await daemon.put(account("acme"))
        reconciler = daemon.server.app[RECONCILER]
        client: SidecarClient = await aiohttp_client(
            create_app(sidecar_settings(tmp_path, daemon.url, staleness_budget_s=BUDGET_S))
        )

        async def current() -> bool:
            body = await status(client)
            return bool(
                body["daemon"]["connected"] and not body["stale"] and body["daemon"]["daemon_lag_s"] == 0
            )

        await eventually(current, within=60.0)
        stripe.fail = True  # Stripe's API away: reconciliation fails, the mirror may fall behind
        assert not (await reconciler.run()).ok

        async def stale_while_connected() -> bool:
            body = await status(client)
            replica = body["replica"]
            return bool(
                body["daemon"]["connected"]
                and body["stale"]
                and replica["daemon_lag_seconds"] > BUDGET_S
                and replica["age_seconds"] >= replica["daemon_lag_seconds"]
            )

        await eventually(stale_while_connected, within=60.0)
        replica = (await status(client))["replica"]
        assert replica["contact_age_seconds"] < replica["age_seconds"]
        assert await metric(client, "tiergate_daemon_lag_seconds") > BUDGET_S
        assert await metric(client, "tiergate_replica_age_seconds") > BUDGET_S
        decision = await (await client.get("/v1/check", params={"tenant": "acme", "feature": "sso"})).json()
        assert decision["stale"] is True and decision["allow"] is True  # still answered, and flagged
        assert (await client.get("/readyz")).status == 200  # everyone's problem: not this pod's

        stripe.fail = False
        assert (await reconciler.run()).ok
        await eventually(current, within=60.0)
    finally:
        await daemon.server.close()


async def test_the_daemon_reports_its_lag_in_status_metrics_and_the_feed(tmp_path: Path) -> None:
    daemon = await start_daemon(tmp_path)  # Stripe at 127.0.0.1:9: nothing answers
    try:
        assert not (await daemon.server.app[RECONCILER].run()).ok
        async with aiohttp.ClientSession(daemon.url, headers=AUTH) as session:

            async def lagging() -> bool:
                async with session.get("/v1/status") as response:
                    body = await response.json()
                return bool(body["feed"]["mirror_lag_s"] > 0)

            await eventually(lagging)
            async with session.get("/metrics") as response:
                text = await response.text()
            lag = next(line for line in text.splitlines() if line.startswith("tiergate_mirror_lag_seconds "))
            assert float(lag.split()[-1]) > 0
            async with session.get("/v1/feed/changes", params={"since": "0", "wait": "0"}) as response:
                assert (await response.json())["mirror_lag_s"] > 0
            async with session.get("/v1/feed/snapshot") as response:
                header = json.loads((await response.text()).splitlines()[0])
            assert header["type"] == "snapshot" and header["mirror_lag_s"] > 0
    finally:
        await daemon.server.close()
