"""Support's tenant reads: `GET /v1/tenants/{tenant}` and `GET /v1/tenants?q=` (API or console token)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tiergate.errors import BadRequestError, BillingDisabledError
from tiergate.periods import rfc3339
from tiergate.sync_daemon.billing.auth import path_tenant
from tiergate.sync_daemon.mirror.lookup import TenantRecord, read_tenant, search_tenants
from tiergate.sync_daemon.mirror.store import MirrorAccount
from tiergate.sync_daemon.settings import DaemonSettings
from tiergate.sync_daemon.state import MIRROR, SETTINGS
from tiergate.sync_daemon.support.answers import PolicyAnswers
from tiergate.web import json_response, require_bearer

ANSWERS = web.AppKey("support_answers", PolicyAnswers)
SEARCH_LIMIT = 50
STRIPE_CAUSES = ("stripe_event", "billing_action")


def read_tokens(settings: DaemonSettings) -> str:
    """Every token that may read tenants: the API token's and both console tokens', comma-separated."""
    found = [settings.api_token, settings.console_token, settings.console_operator_token]
    return ",".join(token.get_secret_value() for token in found if token is not None)


def authorize_read(request: web.Request) -> None:
    tokens = read_tokens(request.app[SETTINGS])
    if not tokens:
        raise BillingDisabledError(
            "tenant lookups are off: set TIERGATE_API_TOKEN or TIERGATE_CONSOLE_TOKEN to enable them"
        )
    require_bearer(request, tokens, "TIERGATE_API_TOKEN or TIERGATE_CONSOLE_TOKEN")


async def tenant_view(app: web.Application, tenant: str) -> dict[str, Any]:
    """The whole lookup as a document (the API's answer and the console's tenant page)."""
    record = await app[MIRROR].read(lambda sql: read_tenant(sql, tenant))
    now = datetime.now(UTC).replace(microsecond=0)
    entitlements = await app[ANSWERS].entitlements(record, now)
    return render_tenant(record, entitlements, now)


def render_tenant(record: TenantRecord, entitlements: dict[str, Any], now: datetime) -> dict[str, Any]:
    features = entitlements["features"]
    applied = next((f["tier"] for f in features.values() if f.get("tier")), None)
    return {
        "tenant": record.tenant,
        "known": record.known,
        "tier": applied,
        "paid_tier": record.account.tier if record.account else None,
        "account": render_account(record.account),
        "customers": record.customers,
        "customer_emails": record.emails,
        "entitlements": entitlements,
        "counters": render_counters(record, entitlements),
        "overrides": [o.render(now) for o in record.overrides],
        "override_audit": record.override_audit,
        "stripe_events": [
            {k: v[k] for k in ("event_id", "event_type", "event_at", "cause", "version", "at")}
            for v in record.versions
            if v["cause"] in STRIPE_CAUSES
        ],
        "versions": record.versions,
        "webhooks": record.webhooks,
    }


def render_account(account: MirrorAccount | None) -> dict[str, Any] | None:
    if account is None:
        return None
    pending = (
        {
            "tier": account.pending_tier,
            "interval": account.pending_interval,
            "at": rfc3339(account.pending_at),
        }
        if account.pending_tier
        else None
    )
    return {
        "paid_tier": account.tier,
        "interval": account.interval,
        "status": account.status,
        "seats": account.quantity,
        "period": {
            "start": rfc3339(account.current_period_start),
            "end": rfc3339(account.current_period_end),
        },
        "trial_end": rfc3339(account.trial_end),
        "cancel_at_period_end": account.cancel_at_period_end,
        "canceled_at": rfc3339(account.canceled_at),
        # Grace is policy: the shipped one keeps a past-due account's access for a few days from here.
        "past_due_since": rfc3339(account.past_due_since),
        "payment_attempts": account.payment_attempts,
        "pending_change": pending,
        "addons": dict(account.addons),
        "stripe_customer_id": account.stripe_customer_id,
        "subscription_id": account.subscription_id,
        "version": account.version,
        "needs_reconcile": account.needs_reconcile,
        "unmapped_price": account.unmapped_price,
    }


def render_counters(record: TenantRecord, entitlements: dict[str, Any]) -> list[dict[str, Any]]:
    """The counters of the current usage period, each beside its feature's limit (when it has one)."""
    period = entitlements.get("period") or {}
    features = entitlements["features"]
    counters = []
    for period_start, codes in sorted(record.counters.items(), reverse=True):
        current = period_start == period.get("start")
        for code, value in sorted(codes.items()):
            limit = features.get(code, {}).get("limit")
            counters.append(
                {
                    "code": code,
                    "period_start": period_start,
                    "current": current,
                    "value": value,
                    "limit": limit,
                }
            )
    return counters


async def get_tenant(request: web.Request) -> web.Response:
    authorize_read(request)
    return json_response(await tenant_view(request.app, path_tenant(request)))


def search_query(request: web.Request) -> tuple[str, int]:
    query = request.query.get("q", "").strip()
    if not query or len(query) > 200:
        raise BadRequestError(
            "q must be 1 to 200 characters (a tenant, Stripe customer or subscription id, or the start of "
            "a customer's email)",
            field="q",
        )
    raw_limit = request.query.get("limit", str(SEARCH_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 200:
        raise BadRequestError(f"limit must be an integer from 1 to 200, got {raw_limit!r}", field="limit")
    return query, int(raw_limit)


async def find_tenants(request: web.Request) -> web.Response:
    authorize_read(request)
    query, limit = search_query(request)
    found = await request.app[MIRROR].read(lambda sql: search_tenants(sql, query, limit))
    return json_response({"q": query, "tenants": found})


async def answers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    answers = app[ANSWERS] = PolicyAnswers(settings.policies, settings.plans)
    await answers.load()
    yield
    await answers.close()


def add_support_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(answers_ctx)
    app.router.add_get("/v1/tenants", find_tenants)
    app.router.add_get("/v1/tenants/{tenant}", get_tenant)
