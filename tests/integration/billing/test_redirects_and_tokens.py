"""TIERGATE_REDIRECT_HOSTS stops an open redirect through Stripe's pages, and a token setting that
lists two tokens (a rotation) accepts each of them on the billing API and the feed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.fake_stripe import RecordingStripeHTTP
from tests.integration.billing.conftest import Billing
from tests.integration.daemon.conftest import make_settings
from tiergate.errors import BadRequestError
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.billing.redirects import check_redirect, host_allowed
from tiergate.sync_daemon.billing.stripe_actions import StripeBillingActions

ALLOWED = "app.example,*.example.com"
CHECKOUT = {"tenant": "t_new", "tier": "pro", "interval": "month"}


@pytest.fixture
async def guarded(aiohttp_client: Any, tmp_path: Path, recording: RecordingStripeHTTP) -> Billing:
    settings = make_settings(
        tmp_path / "mirror.db",
        "http://127.0.0.1:9",
        api_token=SecretStr("api-token-new-0001, api-token-old-0001"),
        feed_token=SecretStr("feed-token-new-0001,feed-token-old-0001"),
        redirect_hosts=ALLOWED,
        stripe_refetch=False,
    )
    actions = StripeBillingActions("sk_test_guard", api_base="https://api.stripe.com", http=recording)
    return Billing(await aiohttp_client(create_app(settings, actions=actions)), recording)


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("success_url", "https://evil.test/phish"),
        ("cancel_url", "https://app.example.evil.test/"),
        ("success_url", "https://app.example@evil.test/"),
        ("success_url", "https://evil.test\\@app.example/"),
        ("cancel_url", "https://example.com.evil.test/"),
    ],
)
async def test_checkout_refuses_a_url_outside_the_allowed_hosts(
    guarded: Billing, field: str, url: str
) -> None:
    body = {**CHECKOUT, "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"}
    response = await guarded.client.post(
        "/v1/checkout/sessions",
        json={**body, field: url},
        headers={"Authorization": "Bearer api-token-new-0001"},
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["field"] == field
    assert guarded.stripe.calls == []  # refused before Stripe is asked anything


async def test_the_portal_refuses_a_return_url_outside_the_allowed_hosts(guarded: Billing) -> None:
    response = await guarded.client.post(
        "/v1/portal/sessions",
        json={"tenant": "t_acme", "return_url": "https://evil.test/"},
        headers={"Authorization": "Bearer api-token-old-0001"},
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["field"] == "return_url"
    assert "'evil.test' is not in TIERGATE_REDIRECT_HOSTS (app.example, *.example.com)" in error["message"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("app.example", True),
        ("APP.example.", True),
        ("pay.example.com", True),
        ("a.b.example.com", True),
        ("example.com", False),
        ("app.example.net", False),
        ("badexample.com", False),
    ],
)
def test_host_patterns(host: str, allowed: bool) -> None:
    assert any(host_allowed(host, p) for p in ALLOWED.split(",")) is allowed


def test_no_allow_list_allows_any_host() -> None:
    check_redirect("https://anywhere.test/", "success_url", [])
    with pytest.raises(BadRequestError):
        check_redirect("https://anywhere.test/", "success_url", ["app.example"])


@pytest.mark.parametrize(
    ("path", "token"), [("/v1/status", "feed-token-new-0001"), ("/v1/status", "feed-token-old-0001")]
)
async def test_each_listed_feed_token_is_accepted(guarded: Billing, path: str, token: str) -> None:
    response = await guarded.client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer feed-token-new-0001,feed-token-old-0001",
        "Bearer feed",
        "Bearer ",
        "Bearer api-token-new-0001",
        "feed-token-new-0001",
    ],
)
async def test_anything_else_is_refused(guarded: Billing, authorization: str) -> None:
    response = await guarded.client.get("/v1/status", headers={"Authorization": authorization})
    assert response.status == 401
    assert "TIERGATE_FEED_TOKEN" in (await response.json())["error"]["message"]


@pytest.mark.parametrize(
    ("token", "status"),
    [("api-token-new-0001", 409), ("api-token-old-0001", 409), ("feed-token-new-0001", 401)],
)
async def test_each_listed_api_token_is_accepted(guarded: Billing, token: str, status: int) -> None:
    response = await guarded.client.post(
        "/v1/subscriptions/t_nobody/cancel", json={}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status == status  # 409: authorised, and the tenant has no subscription
    if status == 401:
        assert "TIERGATE_API_TOKEN" in (await response.json())["error"]["message"]


def test_an_unset_allow_list_is_warned_about_at_start(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "m.db", "http://127.0.0.1:9", api_token=SecretStr("api-token-0123456789")
    )
    with capture_logs() as logs:
        create_app(settings)
    assert [e["setting"] for e in logs if e["event"] == "redirect_hosts_unset"] == ["TIERGATE_REDIRECT_HOSTS"]


def test_a_bad_host_in_the_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'https://app\.example' is not a host name"):
        make_settings(tmp_path / "m.db", "http://127.0.0.1:9", redirect_hosts="https://app.example")
