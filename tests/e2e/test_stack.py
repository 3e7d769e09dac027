"""End to end: localstripe -> signed webhooks / reconciliation -> sync daemon -> feed -> sidecar decisions.

Every process is real and separate (see conftest.py). Nothing here asserts a duration: each
wait polls with a generous deadline.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import stripe

from demo.processes import http_status
from tests.e2e.conftest import Stack, eventually, get_json
from tests.localstripe_api import subscribe

pytestmark = pytest.mark.slow


async def sso(http: aiohttp.ClientSession, stack: Stack, tenant: str) -> dict[str, Any]:
    """The sidecar's decision on the `sso` feature (off on free and starter, on for pro)."""
    return await get_json(http, stack.sidecar_url + "/v1/check", tenant=tenant, feature="sso")


async def status(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    return await get_json(http, stack.sidecar_url + "/v1/status")


async def test_a_subscription_created_in_stripe_flips_the_sidecar_decision(
    stack: Stack, stripe_api: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    stack.start_daemon()
    stack.start_sidecar()
    before = await sso(http, stack, "t_alice")
    assert (before["_status"], before["tier"], before["allow"]) == (200, "free", False)

    subscription = await subscribe(stripe_api, "t_alice", "pro_month")

    async def alice_is_pro() -> bool:
        decision = await sso(http, stack, "t_alice")
        return bool(decision["tier"] == "pro" and decision["allow"])

    await eventually(alice_is_pro, "t_alice's decision flips from free to pro", stack)
    decision = await sso(http, stack, "t_alice")
    assert decision["data_as_of"] is not None

    # Cancel now: localstripe sends customer.subscription.deleted (and reconciliation agrees).
    await stripe_api.v1.subscriptions.cancel_async(subscription.id)

    async def alice_loses_sso() -> bool:
        return (await sso(http, stack, "t_alice"))["allow"] is False

    await eventually(alice_loses_sso, "a canceled subscription takes sso away", stack)
    mirror_seq = (await status(http, stack))["daemon"]["position"]
    assert isinstance(mirror_seq, int) and mirror_seq >= 2  # at least the create and the cancel


async def test_the_sidecar_fails_static_while_the_daemon_is_down_then_catches_up(
    stack: Stack, stripe_api: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    stack.start_daemon()
    stack.start_sidecar()
    alice = await subscribe(stripe_api, "t_alice", "pro_month")

    async def pro(tenant: str) -> bool:
        decision = await sso(http, stack, tenant)
        return bool(decision["tier"] == "pro" and decision["allow"])

    await eventually(lambda: pro("t_alice"), "t_alice becomes pro", stack)

    stack.daemon.kill()  # SIGKILL: a crash, no goodbye on the feed connection

    async def stale_and_disconnected() -> bool:
        decision = await sso(http, stack, "t_alice")
        daemon = (await status(http, stack))["daemon"]
        return bool(decision["stale"] and not daemon["connected"])

    await eventually(stale_and_disconnected, "the sidecar reports stale data and a lost daemon", stack)
    decision = await sso(http, stack, "t_alice")
    assert (decision["_status"], decision["tier"], decision["allow"]) == (200, "pro", True)  # fail-static
    report = await status(http, stack)
    assert report["stale"] is True and report["daemon"]["last_error"]
    assert report["replica"]["age_seconds"] > 0
    assert http_status(stack.sidecar_url + "/readyz") == 200  # a stale replica still serves

    # While the daemon is down, Stripe changes: its webhooks go nowhere (localstripe never retries).
    await subscribe(stripe_api, "t_bob", "pro_month")
    await stripe_api.v1.subscriptions.cancel_async(alice.id)
    assert not (await sso(http, stack, "t_bob"))["allow"]

    stack.start_daemon()  # same mirror, same port; reconciliation at start repairs the mirror

    async def caught_up() -> bool:
        bob = await sso(http, stack, "t_bob")
        alice = await sso(http, stack, "t_alice")
        return bool(bob["tier"] == "pro" and bob["allow"] and alice["allow"] is False)

    await eventually(caught_up, "the changes made while the daemon was down reach the sidecar", stack)

    async def fresh_and_connected() -> bool:
        report = await status(http, stack)
        return bool(report["daemon"]["connected"] and not report["stale"])

    await eventually(fresh_and_connected, "the sidecar reconnects and is fresh again", stack)
    # Resumed from its position: the bootstrap snapshot stays the only one it took.
    assert (await status(http, stack))["daemon"]["snapshots"] == 1


async def test_a_sidecar_restarted_while_the_daemon_is_down_answers_from_its_replica(
    stack: Stack, stripe_api: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    stack.start_daemon()
    stack.start_sidecar()
    await subscribe(stripe_api, "t_carol", "pro_month", quantity=3)

    async def carol_is_pro() -> bool:
        decision = await sso(http, stack, "t_carol")
        return bool(decision["tier"] == "pro" and decision["allow"])

    await eventually(carol_is_pro, "t_carol becomes pro", stack)

    stack.daemon.kill()
    stack.sidecar.stop()
    stack.start_sidecar(wait_ready=False)
    # The first answer the new process gives is already "ready": no snapshot needed.
    first = stack.sidecar.wait_http(stack.sidecar_url + "/readyz", lambda status: True)
    assert first == 200
    decision = await sso(http, stack, "t_carol")
    assert (decision["_status"], decision["tier"], decision["allow"]) == (200, "pro", True)

    async def stale_and_disconnected() -> bool:
        report = await status(http, stack)
        return bool(report["stale"] and not report["daemon"]["connected"] and report["daemon"]["last_error"])

    await eventually(stale_and_disconnected, "the restarted sidecar reports its stale replica", stack)
    report = await status(http, stack)
    assert report["replica"]["accounts"] == 1 and report["daemon"]["snapshots"] == 0
    assert (await sso(http, stack, "t_carol"))["stale"] is True
