"""`make demo`: the whole stack on loopback, and the story of one tenant a newcomer can watch.

localstripe (a Stripe emulator), the sync daemon and a sidecar run as separate processes on
127.0.0.1; everything they write stays under .state/demo/. Ctrl-C stops them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import stripe

from demo.processes import Process, free_port, tiergate_command

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".state" / "demo"
TENANT = "acme"
FEED_TOKEN = "demo-feed-token-0001"
API_TOKEN = "demo-api-token-0001"
WEBHOOK_SECRET = "whsec_demo_0123456789"
STRIPE_KEY = "sk_test_demo_0000"


class Stack:
    """The three processes and their URLs."""

    def __init__(self) -> None:
        self.ports = {name: free_port() for name in ("stripe", "daemon", "sidecar")}
        self.stripe_url = f"http://127.0.0.1:{self.ports['stripe']}"
        self.daemon_url = f"http://127.0.0.1:{self.ports['daemon']}"
        self.sidecar_url = f"http://127.0.0.1:{self.ports['sidecar']}"
        self.env = os.environ | {
            "TIERGATE_STRIPE_API_KEY": STRIPE_KEY,
            "TIERGATE_STRIPE_API_BASE": self.stripe_url,
            "TIERGATE_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            # The demo plays Stripe's dunning events itself (localstripe cannot produce them);
            # re-fetching would replace them with localstripe's view, which stays "active".
            "TIERGATE_STRIPE_REFETCH": "false",
            "TIERGATE_RECONCILE_INTERVAL_S": "3600",
            "TIERGATE_FEED_TOKEN": FEED_TOKEN,
            "TIERGATE_API_TOKEN": API_TOKEN,
            "TIERGATE_DAEMON_PORT": str(self.ports["daemon"]),
            "TIERGATE_MIRROR_PATH": str(STATE / "mirror.db"),
            "TIERGATE_DAEMON_URL": self.daemon_url,
            "TIERGATE_SIDECAR_PORT": str(self.ports["sidecar"]),
            "TIERGATE_REPLICA_PATH": str(STATE / "replica.db"),
            "TIERGATE_OUTBOX_PATH": str(STATE / "outbox.db"),
            "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
            "TIERGATE_POLICIES": str(ROOT / "policies"),
            "TIERGATE_LOG_JSON": "false",
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
        }
        launcher = [sys.executable, str(ROOT / "tests" / "localstripe_server.py"), str(self.ports["stripe"])]
        self.processes = [
            Process("localstripe", launcher, self.env, STATE / "localstripe.log", ROOT),
            Process("sync-daemon", tiergate_command("sync-daemon"), self.env, STATE / "daemon.log", ROOT),
            Process("sidecar", tiergate_command("sidecar"), self.env, STATE / "sidecar.log", ROOT),
        ]

    def start(self) -> None:
        stripe_process, daemon, sidecar = self.processes
        stripe_process.start()
        stripe_process.wait_http(self.stripe_url + "/v1/customers", lambda status: status in (200, 401))
        _post_json(
            self.stripe_url + "/_config/webhooks/tiergate",
            {"url": self.daemon_url + "/webhooks/stripe", "secret": WEBHOOK_SECRET},
        )
        daemon.start()
        daemon.wait_http(self.daemon_url + "/readyz", lambda status: status == 200)
        sidecar.start()
        sidecar.wait_http(self.sidecar_url + "/readyz", lambda status: status == 200)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _post_json(url: str, body: dict[str, Any]) -> None:
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=5).close()


# -- what a newcomer watches -------------------------------------------------------------------


# localstripe sleeps one second before it sends each webhook (localstripe/webhooks.py): real
# Stripe sends at once, so a newcomer must not read that second as tiergate's.
LOCALSTRIPE_NOTE = (
    "localstripe waits 1 s before sending each webhook: about 1000 ms of the time below is the "
    "emulator's; the daemon-to-sidecar part is a few ms"
)


def say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m", flush=True)


def show(decision: dict[str, Any], took_ms: float | None = None) -> None:
    verdict = "ALLOW" if decision["allow"] else "DENY "
    quota = f" limit={decision['limit']} used={decision['used']}" if decision.get("limit") is not None else ""
    timing = f"   (visible after {took_ms:.0f} ms)" if took_ms is not None else ""
    print(
        f"   {decision['feature']:<10} -> {verdict} reason={decision['reason']:<22} tier={decision['tier']}{quota}{timing}",
        flush=True,
    )


class Story:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession, api: stripe.StripeClient) -> None:
        self.stack = stack
        self.http = http
        self.api = api
        self.subscription_id = ""
        self.customer_id = ""

    async def check(self, feature: str, quantity: int = 1) -> dict[str, Any]:
        params = {"tenant": TENANT, "feature": feature, "quantity": str(quantity)}
        async with self.http.get(self.stack.sidecar_url + "/v1/check", params=params) as response:
            decision: dict[str, Any] = await response.json()
            return decision

    async def until(self, feature: str, done: Callable[[dict[str, Any]], bool], since: float) -> None:
        """Poll the sidecar until the answer changes; print it with how long that took."""
        deadline = time.monotonic() + 15
        while True:
            decision = await self.check(feature)
            if done(decision) or time.monotonic() > deadline:
                show(decision, (time.monotonic() - since) * 1000)
                return
            await asyncio.sleep(0.02)

    async def until_status(self, status: str, since: float) -> None:
        deadline = time.monotonic() + 15
        url = f"{self.stack.sidecar_url}/v1/entitlements/{TENANT}"
        while time.monotonic() < deadline:
            async with self.http.get(url) as response:
                account = (await response.json())["account"] or {}
            if account.get("status") == status:
                took_ms = (time.monotonic() - since) * 1000
                print(f"   account status: {status}   (visible after {took_ms:.0f} ms)")
                return
            await asyncio.sleep(0.02)
        print(f"   account status is still {account.get('status')!r}, not {status!r}: see {STATE}/daemon.log")

    async def daemon(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with self.http.post(self.stack.daemon_url + path, json=body, headers=headers) as response:
            answer: dict[str, Any] = await response.json()
            if response.status >= 400:
                raise SystemExit(f"{path} answered {response.status}: {answer}")
            return answer

    async def webhook(self, event_type: str, obj: dict[str, Any], created: datetime) -> None:
        """Deliver an event signed exactly as Stripe signs it (v1 HMAC over `t.body`)."""
        event = {
            "id": f"evt_demo_{hashlib.sha1(f'{event_type}{created}'.encode()).hexdigest()[:16]}",
            "object": "event",
            "type": event_type,
            "created": int(created.timestamp()),
            "api_version": "2026-10-28.endive",
            "livemode": False,
            "data": {"object": obj},
        }
        raw = json.dumps(event)
        stamp = int(time.time())
        signature = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.{raw}".encode(), hashlib.sha256).hexdigest()
        headers = {"Stripe-Signature": f"t={stamp},v1={signature}", "Content-Type": "application/json"}
        async with self.http.post(self.stack.daemon_url + "/webhooks/stripe", data=raw, headers=headers) as r:
            r.raise_for_status()

    async def run(self) -> None:
        say("1. The catalog goes to Stripe: `tiergate plans push` (localstripe has no Prices: Plans)")
        push = await asyncio.create_subprocess_exec(
            *tiergate_command("plans", "push"), env=self.stack.env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await push.communicate()
        print("   " + out.decode().strip().replace("\n", "\n   "))

        say(f"2. {TENANT} has no subscription: the free tier, no reports")
        show(await self.check("reports"))

        say(f"3. {TENANT} subscribes to starter (what Checkout does once the card is accepted)")
        started = time.monotonic()
        customer = await self.api.v1.customers.create_async({"metadata": {"tenant_id": TENANT}})
        method = await self.api.v1.payment_methods.attach_async("pm_card_visa", {"customer": customer.id})
        await self.api.v1.customers.update_async(
            customer.id, {"invoice_settings": {"default_payment_method": method.id}}
        )
        subscription = await self.api.v1.subscriptions.create_async(
            {"customer": customer.id, "items": [{"plan": "starter_month"}], "metadata": {"tenant_id": TENANT}}
        )
        self.customer_id, self.subscription_id = customer.id, subscription.id
        print("   Stripe -> webhook -> daemon's mirror -> change feed -> sidecar's replica")
        print(f"   ({LOCALSTRIPE_NOTE})")
        await self.until("reports", lambda d: bool(d["allow"]), started)

        say("4. The app records usage (Lago-shaped events): 200 exports, starter's monthly limit")
        for batch in range(2):
            events = [
                {"transaction_id": f"export-{batch}-{i}", "external_customer_id": TENANT, "code": "exports"}
                for i in range(100)
            ]
            async with self.http.post(
                self.stack.sidecar_url + "/v1/usage/batch", json={"events": events}
            ) as r:
                r.raise_for_status()
        print(
            "   202 Accepted: durable in the sidecar's outbox, counted at once, delivered in the background"
        )
        show(await self.check("exports"))

        say("5. Upgrade to pro through the daemon's billing API (applies now, prorated)")
        started = time.monotonic()
        await self.daemon(f"/v1/subscriptions/{TENANT}/change", {"tier": "pro"})
        await self.until("exports", lambda d: bool(d["allow"]), started)
        show(await self.check("sso"))

        say("6. The renewal payment fails: Stripe marks the subscription past_due; pro keeps 7 days of grace")
        now = datetime.now(UTC)
        started = time.monotonic()
        await self.webhook("customer.subscription.updated", self._subscription("past_due", now), now)
        await self.until_status("past_due", started)
        show(await self.check("sso"))
        print("   ...Stripe's failed invoice shows the first attempt was 8 days ago: the grace is over")
        started = time.monotonic()
        failed = now - timedelta(days=8)
        await self.webhook("invoice.payment_failed", self._invoice(), failed)
        await self.until("sso", lambda d: d["reason"] == "payment_overdue", started)

        say(f"7. {TENANT} cancels now: back to the free tier")
        started = time.monotonic()
        await self.daemon(f"/v1/subscriptions/{TENANT}/cancel", {"at_period_end": False})
        await self.until_status("canceled", started)
        show(await self.check("sso"))

    def _subscription(self, status: str, now: datetime) -> dict[str, Any]:
        start, end = int(now.timestamp()) - 86400, int(now.timestamp()) + 29 * 86400
        return {
            "id": self.subscription_id,
            "object": "subscription",
            "customer": self.customer_id,
            "status": status,
            "metadata": {"tenant_id": TENANT},
            "cancel_at_period_end": False,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": "si_demo",
                        "object": "subscription_item",
                        "quantity": 1,
                        "price": {"id": "pro_month", "lookup_key": "pro_month", "object": "price"},
                        "current_period_start": start,
                        "current_period_end": end,
                    }
                ],
            },
        }

    def _invoice(self) -> dict[str, Any]:
        return {
            "id": "in_demo_failed",
            "object": "invoice",
            "customer": self.customer_id,
            "status": "open",
            "attempt_count": 3,
            "billing_reason": "subscription_cycle",
            "parent": {"subscription_details": {"subscription": self.subscription_id}},
        }


async def main_async(stack: Stack) -> None:
    transport = stripe.AIOHTTPClient()
    api = stripe.StripeClient(
        STRIPE_KEY, base_addresses={"api": stack.stripe_url}, http_client=transport, max_network_retries=0
    )
    try:
        async with aiohttp.ClientSession() as http:
            await Story(stack, http, api).run()
    finally:
        await transport.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped


def main() -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    stack = Stack()
    print(
        f"Starting localstripe, the sync daemon and a sidecar on 127.0.0.1 (logs in {STATE.relative_to(ROOT)}/)"
    )
    started = time.monotonic()
    try:
        stack.start()
        print(
            f"   ready in {time.monotonic() - started:.1f} s: sidecar {stack.sidecar_url}, daemon {stack.daemon_url}"
        )
        asyncio.run(main_async(stack))
        say("Done. The same calls work against real Stripe test mode: see docs/billing.md.")
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        stack.stop()
        print("stopped localstripe, the daemon and the sidecar.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
