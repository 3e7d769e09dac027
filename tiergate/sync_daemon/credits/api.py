"""Credits on the daemon (bearer TIERGATE_API_TOKEN): grant, list, the ledger, void.

`POST /v1/tenants/{tenant}/credits/grants` grants once per `Idempotency-Key` (a retry answers
the first grant; the same key with another body is a 409), `GET /v1/tenants/{tenant}/credits` lists
balances with their grants and next expiry, `GET .../credits/ledger` pages the entries, and
`POST .../credits/grants/{id}/void` voids the unspent part of a grant.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Literal

import structlog
from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tiergate.amounts import Amount, AmountError, stored
from tiergate.catalog import Catalog
from tiergate.credits import credit_amount
from tiergate.errors import BadRequestError, ConflictError, NotFoundError
from tiergate.sync_daemon.billing.auth import authorize, parse_body, path_tenant
from tiergate.sync_daemon.credits.events import granted_event, send
from tiergate.sync_daemon.credits.ledger import (
    Grant,
    NewGrant,
    Source,
    Voided,
    add_grant,
    ledger_page,
    tenant_balances,
    type_balance,
    void_grant,
)
from tiergate.sync_daemon.credits.top_ups import (
    TopUpRule,
    after_moves,
    remove_rule,
    rules_of,
    runs_of,
    set_rule,
)
from tiergate.sync_daemon.mirror.store import MirrorTxn
from tiergate.sync_daemon.state import APPLIER, CATALOG, MIRROR
from tiergate.web import json_response, query_params

log = structlog.get_logger("tiergate.credits")

LEDGER_PAGE = 100
LEDGER_PAGE_MAX = 1000
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200)]


class GrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credit_type: Annotated[str, Field(min_length=1, max_length=63)]
    amount: int | str  # exact: an int or a decimal string, checked against the type's decimals
    category: Literal["paid", "promotional"] = "promotional"
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    effective_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    actor: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class TopUpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pack: Annotated[str, Field(min_length=1, max_length=63)]
    below: int | str  # exact, at least 0, to the type's decimals


class VoidRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)] = "voided"
    actor: Annotated[str, Field(min_length=1, max_length=200)] | None = None


def wanted_grant(
    tenant: str, body: GrantRequest, catalog: Catalog, key: str | None, now: datetime
) -> NewGrant:
    """The grant a request asks for, or BadRequestError naming the field (pure)."""
    kind = catalog.credits.get(body.credit_type)
    if kind is None:
        known = sorted(catalog.credits)
        raise BadRequestError(
            f"credit_type {body.credit_type!r} is not in the catalog (known: {known})", field="credit_type"
        )
    amount = _amount(body.amount, kind.decimals)
    effective = body.effective_at or now
    if body.expires_at is not None and body.expires_at <= max(now, effective):
        raise BadRequestError(
            f"expires_at {body.expires_at.isoformat()} is not after the grant takes effect "
            f"({max(now, effective).isoformat(timespec='seconds')})",
            field="expires_at",
        )
    source: Source = "manual"
    return NewGrant(
        tenant,
        body.credit_type,
        amount,
        body.category,
        source,
        f"key:{key}" if key else f"once:{secrets.token_hex(12)}",
        body.priority,
        body.effective_at,
        body.expires_at,
        body.actor,
        body.reason,
    )


def _amount(value: int | str, decimals: int) -> Amount:
    try:
        return credit_amount(value, decimals)
    except AmountError as exc:
        raise BadRequestError(f"amount {exc}", field="amount") from None


def same_request(held: Grant, new: NewGrant) -> bool:
    """Whether a grant found by its Idempotency-Key is what this request asks for."""
    return (held.credit_type, held.amount, held.category, held.priority, held.reason) == (
        new.credit_type,
        new.amount,
        new.category,
        new.priority,
        new.reason,
    )


async def post_grant(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    body = await parse_body(request, GrantRequest)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise BadRequestError("the Idempotency-Key header is 1 to 200 characters", field="Idempotency-Key")
    now = datetime.now(UTC)
    new = wanted_grant(tenant, body, request.app[CATALOG], key, now)
    outbound = request.app[APPLIER].outbound

    def grant(txn: MirrorTxn) -> tuple[Grant, bool]:
        made, created = add_grant(txn, new, now)
        if created and outbound is not None:
            send(txn, outbound.endpoints, [granted_event(made)])
        return made, created

    made, created = await request.app[MIRROR].transact(grant)
    if not created and not same_request(made, new):
        raise ConflictError(
            f"Idempotency-Key {key!r} was used for another grant ({made.id}) with another body"
        )
    state = await request.app[MIRROR].read(lambda sql: type_balance(sql, tenant, new.credit_type, now))
    if created:
        log.info("credits_granted", tenant=tenant, grant=made.id, amount=str(made.amount), actor=made.actor)
    answer = {"tenant": tenant, "grant": made.render(), "balance": stored(state.balance)}
    return json_response(answer, status=201 if created else 200)


async def get_credits(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    now = datetime.now(UTC)
    balances = await request.app[MIRROR].read(lambda sql: tenant_balances(sql, tenant, now))
    rules = await request.app[MIRROR].read(lambda sql: rules_of(sql, tenant))
    runs = await request.app[MIRROR].read(lambda sql: runs_of(sql, tenant))
    top_ups = [{"credit_type": r.credit_type, "below": stored(r.below), "pack": r.pack} for r in rules]
    answer = {
        "tenant": tenant,
        "credits": [b.render() for b in balances],
        "top_ups": top_ups,
        "top_up_runs": runs,
    }
    return json_response(answer)


def wanted_top_up(tenant: str, credit_type: str, body: TopUpRequest, catalog: Catalog) -> TopUpRule:
    """The automatic top-up a request asks for, or BadRequestError naming the field (pure)."""
    kind = catalog.credits.get(credit_type)
    if kind is None:
        raise BadRequestError(
            f"credit type {credit_type!r} is not in the catalog (known: {sorted(catalog.credits)})",
            field="credit_type",
        )
    pack = catalog.packs.get(body.pack)
    if pack is None or pack.credits != credit_type:
        sold = sorted(name for name, p in catalog.packs.items() if p.credits == credit_type)
        raise BadRequestError(
            f"pack {body.pack!r} is not a pack of {credit_type!r} (known: {sold})", field="pack"
        )
    try:
        below = credit_amount(body.below, kind.decimals, positive=False)
    except AmountError as exc:
        raise BadRequestError(f"below {exc}", field="below") from None
    if below < 0:
        raise BadRequestError(f"below must be at least 0, got {body.below!r}", field="below")
    return TopUpRule(tenant, credit_type, below, body.pack)


async def put_top_up(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    body = await parse_body(request, TopUpRequest)
    rule = wanted_top_up(tenant, request.match_info["credit_type"], body, request.app[CATALOG])
    now = datetime.now(UTC)
    await request.app[MIRROR].transact(lambda txn: set_rule(txn, rule, now))
    log.info(
        "credits_top_up_set",
        tenant=tenant,
        credit_type=rule.credit_type,
        below=str(rule.below),
        pack=rule.pack,
    )
    return json_response(
        {"tenant": tenant, "credit_type": rule.credit_type, "below": stored(rule.below), "pack": rule.pack}
    )


async def delete_top_up(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    credit_type = request.match_info["credit_type"]
    removed = await request.app[MIRROR].transact(lambda txn: remove_rule(txn, tenant, credit_type))
    if not removed:
        raise NotFoundError(f"tenant {tenant!r} has no automatic top-up of {credit_type!r}")
    return json_response({"tenant": tenant, "credit_type": credit_type, "removed": True})


async def get_ledger(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    params = query_params(request)
    after = _bounded_int(params.get("after", "0"), "after", 0, 2**62)
    limit = _bounded_int(params.get("limit", str(LEDGER_PAGE)), "limit", 1, LEDGER_PAGE_MAX)
    page = await request.app[MIRROR].read(lambda sql: ledger_page(sql, tenant, after, limit))
    next_after = page[-1]["id"] if len(page) == limit else None
    return json_response({"tenant": tenant, "entries": page, "next_after": next_after})


async def post_void(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    grant_id = request.match_info["grant_id"]
    body = await parse_body(request, VoidRequest, empty_ok=True)
    now = datetime.now(UTC)
    catalog, outbound = request.app[CATALOG], request.app[APPLIER].outbound

    def void(txn: MirrorTxn) -> Voided | None:
        found = void_grant(txn, tenant, grant_id, now)
        if found is not None and found.moved is not None:
            after_moves(txn, catalog, outbound.endpoints if outbound is not None else [], [found.moved], now)
        return found

    found = await request.app[MIRROR].transact(void)
    if found is None:
        raise NotFoundError(f"tenant {tenant!r} has no credit grant {grant_id!r}")
    log.info(
        "credits_voided",
        tenant=tenant,
        grant=grant_id,
        voided=str(found.voided),
        actor=body.actor,
        reason=body.reason,
    )
    return json_response({"tenant": tenant, "grant": found.grant.render(), "voided": stored(found.voided)})


def _bounded_int(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequestError(f"{name} must be a whole number, got {text[:50]!r}", field=name) from None
    if not low <= value <= high:
        raise BadRequestError(f"{name} must be between {low} and {high}, got {value}", field=name)
    return value


def add_credit_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tenants/{tenant}/credits", get_credits)
    app.router.add_get("/v1/tenants/{tenant}/credits/ledger", get_ledger)
    app.router.add_post("/v1/tenants/{tenant}/credits/grants", post_grant)
    app.router.add_post("/v1/tenants/{tenant}/credits/grants/{grant_id}/void", post_void)
    app.router.add_put("/v1/tenants/{tenant}/credits/top-ups/{credit_type}", put_top_up)
    app.router.add_delete("/v1/tenants/{tenant}/credits/top-ups/{credit_type}", delete_top_up)
