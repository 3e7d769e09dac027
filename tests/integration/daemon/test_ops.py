"""Operations routes and settings: health, readiness, status, metrics; secrets stay hidden."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon.conftest import AUTH, FEED_TOKEN, Daemon, FakeStripe, make_settings
from tests.stripe_payloads import SECRET, subscription_event
from tiergate.errors import SettingsError
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.settings import DaemonSettings, load_settings
from tiergate.sync_daemon.state import RECONCILER


async def test_health_ready_status_metrics(daemon: Daemon) -> None:
    assert (await daemon.client.get("/healthz")).status == 200
    ready = await (await daemon.client.get("/readyz")).json()
    assert ready == {"ready": True, "ok": ["mirror"], "failing": {}}  # no reconcile has run yet
    await daemon.post(subscription_event("customer.subscription.created"))
    await daemon.post(subscription_event("customer.subscription.created"))
    status = await (await daemon.client.get("/v1/status", headers=AUTH)).json()
    assert status["webhooks"] == {"customer.subscription.created": {"applied": 1, "duplicate": 1}}
    nothing_unnumbered = {"unnumbered": 0, "stale": 0, "oldest_s": 0.0, "swept": 0}
    assert status["feed"] == {"seq": 1, "mirror_lag_s": 0.0, "unnumbered": nothing_unnumbered}
    assert status["reconcile"] is None
    metrics = await (await daemon.client.get("/metrics")).text()
    assert "tiergate_feed_seq 1.0" in metrics
    assert 'tiergate_webhooks_total{outcome="duplicate",type="customer.subscription.created"} 1.0' in metrics


def test_secrets_never_in_reprs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "m.db", "http://127.0.0.1:9")
    text = repr(settings) + str(settings.model_dump())
    assert SECRET not in text and FEED_TOKEN not in text and "sk_test_daemon" not in text


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERGATE_STRIPE_API_KEY", "sk_test_secret_value")
    monkeypatch.setenv("TIERGATE_STRIPE_WEBHOOK_SECRET", "whsec_test_0123456789")
    monkeypatch.setenv("TIERGATE_FEED_TOKEN", "token-value-0123456789")
    monkeypatch.setenv("TIERGATE_DAEMON_PORT", "99999")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "TIERGATE_DAEMON_PORT='99999'" in caught.value.message
    assert "sk_test_secret_value" not in caught.value.message
    monkeypatch.delenv("TIERGATE_DAEMON_PORT")
    monkeypatch.delenv("TIERGATE_FEED_TOKEN")
    with pytest.raises(SettingsError, match="TIERGATE_FEED_TOKEN"):
        load_settings()
    monkeypatch.setenv("TIERGATE_FEED_TOKEN", "token-value-0123456789")
    assert isinstance(load_settings(), DaemonSettings)


async def test_scheduler_reconciles_once_at_start(
    aiohttp_client: Any, tmp_path: Path, fake_stripe: FakeStripe
) -> None:
    fake_stripe.subscriptions["sub_fixtureAlice01"] = subscription_event("customer.subscription.created")[
        "data"
    ]["object"]
    settings = make_settings(tmp_path / "m.db", fake_stripe.url, reconcile_at_start=True)
    client = await aiohttp_client(create_app(settings))
    for _ in range(100):
        if client.app[RECONCILER].last is not None:
            break
        await asyncio.sleep(0.05)
    last = client.app[RECONCILER].last
    assert last is not None and (last.ok, last.repairs) == (True, 1)
    assert any(r.startswith("/v1/subscriptions?") and "status=all" in r for r in fake_stripe.requests)
    ready = await (await client.get("/readyz")).json()
    assert ready["ok"] == ["mirror", "reconcile"]
