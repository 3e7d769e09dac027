"""POST /v1/leases (a sidecar's report, renewal, refill or release) and GET /v1/leases/{tenant}.

Each exchange: the tenant's limit for the metric as the policy decides it now (the daemon's own
copy of the policies, docs/adr/0036), its usage window, then one mirror transaction under the
pool's lock (store.exchange). The answer carries the lease's cumulative `granted`: an answer
lost on the way is made good by the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from tiergate.errors import BadRequestError, EngineUnavailableError
from tiergate.periods import rfc3339
from tiergate.sync_daemon.leases.sizing import Ask
from tiergate.sync_daemon.leases.store import Granted, Pool, exchange, outstanding, totals
from tiergate.sync_daemon.mirror.lookup import TenantRecord, read_account, read_counters
from tiergate.sync_daemon.mirror.overrides import tenant_overrides
from tiergate.sync_daemon.mirror.store import Sql
from tiergate.sync_daemon.state import CATALOG, METRICS, MIRROR, SETTINGS
from tiergate.sync_daemon.support.answers import tenant_input
from tiergate.sync_daemon.support.api import ANSWERS
from tiergate.web import json_response, require_bearer, validate

LEASE_TTL_S = web.AppKey("lease_ttl_s", float)


@dataclass
class LeaseClock:
    """The clock leases and windows are read on (a test sets `read` to walk through windows)."""

    read: Callable[[], float] = time.time

    def __call__(self) -> float:
        return self.read()


LEASE_CLOCK = web.AppKey("lease_clock", LeaseClock)
MAX_UNITS = 10**12  # cumulative units a request may report: far above any limit, far below overflow
Units = Annotated[int, Field(ge=0, le=MAX_UNITS)]


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Annotated[str, Field(min_length=1, max_length=200)]
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
    holder: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
    acked: Units = 0
    spent: Units = 0
    want: Units = 0
    need: Units = 0
    rate: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] = 0.0
    release: bool = False


@dataclass(frozen=True, slots=True)
class Terms:
    """What the policy says of the tenant's metric now: its limit (None: unlimited) and window."""

    limit: int | None
    window: str
    window_end: str


async def post_lease(request: web.Request) -> web.Response:
    require_bearer(request, request.app[SETTINGS].feed_token.get_secret_value())
    ask = _parse(await request.read())
    metric = request.app[CATALOG].metrics.get(ask.code)
    if metric is None or metric.enforcement != "leased":
        leased = sorted(c for c, m in request.app[CATALOG].metrics.items() if m.enforcement == "leased")
        raise BadRequestError(f"{ask.code!r} is not a leased metric (leased: {leased})", field="code")
    now = request.app[LEASE_CLOCK]()
    terms = await _terms(request.app, ask.tenant, ask.code, now)
    ttl_s = request.app[LEASE_TTL_S]
    window = {
        "window": terms.window,
        "window_end_epoch": datetime.fromisoformat(terms.window_end).timestamp(),
    }
    if terms.limit is None:
        return json_response({"holder": ask.holder, **window, "unlimited": True, "ttl_s": ttl_s})
    pool = Pool(ask.tenant, ask.code, terms.window)
    units = Ask(ask.holder, ask.acked, ask.spent, ask.want, ask.need, ask.rate, ask.release)
    limit = terms.limit
    granted: Granted = await request.app[MIRROR].transact(
        lambda txn: exchange(txn, pool, units, limit, now, ttl_s)
    )
    outcome = (
        "release"
        if ask.release
        else "granted"
        if granted.added
        else "renewed"
        if ask.want == 0
        else "none_free"
    )
    request.app[METRICS].lease_exchanges.labels(outcome).inc()
    request.app[METRICS].leases_expired.inc(granted.expired)
    return json_response(
        {
            "holder": ask.holder,
            **window,
            "unlimited": False,
            "limit": limit,
            "granted": granted.granted,
            "added": granted.added,
            "free": granted.free,
            "holders": granted.holders,
            "ttl_s": ttl_s,
        }
    )


def _parse(body: bytes) -> LeaseRequest:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not JSON: {exc}", field="body") from exc
    return validate(LeaseRequest, raw)


async def _terms(app: web.Application, tenant: str, code: str, now: float) -> Terms:
    answers = app[ANSWERS]
    if answers.bundle is None:
        raise EngineUnavailableError(
            f"the daemon's policies did not load ({answers.error}): no limit to lease against; "
            "see TIERGATE_POLICIES and TIERGATE_PLANS"
        )
    record = await app[MIRROR].read(lambda sql: _facts(sql, tenant))
    moment = datetime.fromtimestamp(now, UTC)
    facts = tenant_input(record, moment.replace(microsecond=0))
    answer = await answers.decide(facts, code)
    if answer.reason == "policy_error":
        raise EngineUnavailableError(f"the policy gave no answer for {tenant!r} {code!r}: nothing to lease")
    limit = answer.limit if answer.allow or answer.reason == "limit_exceeded" else 0
    window = app[CATALOG].usage_window(code, moment)  # a metric's own window, else the period
    start, end = (rfc3339(window[0]) or "", rfc3339(window[1]) or "") if window else facts.period
    return Terms(limit, start, end)


def _facts(sql: Sql, tenant: str) -> TenantRecord:
    """What the policy reads of a tenant (the lookup's lineage and webhooks are not needed)."""
    return TenantRecord(
        tenant=tenant,
        account=read_account(sql, tenant),
        customers=[],
        emails={},
        counters=read_counters(sql, tenant),
        overrides=tenant_overrides(sql, tenant),
        override_audit=[],
        versions=[],
        webhooks=[],
    )


async def get_leases(request: web.Request) -> web.Response:
    require_bearer(request, request.app[SETTINGS].feed_token.get_secret_value())
    tenant = request.match_info["tenant"]
    now = request.app[LEASE_CLOCK]()
    found = await request.app[MIRROR].read(lambda sql: outstanding(sql, tenant, now))
    return json_response({"tenant": tenant, "leases": found})


async def lease_totals(app: web.Application) -> dict[str, int]:
    """Live leases and the units they hold, across tenants (the daemon's /v1/status)."""
    now = app[LEASE_CLOCK]()
    live, units = await app[MIRROR].read(lambda sql: totals(sql, now))
    return {"live": live, "units": units}


def add_lease_routes(app: web.Application, ttl_s: float) -> None:
    app[LEASE_TTL_S] = ttl_s
    app[LEASE_CLOCK] = LeaseClock()
    app.router.add_post("/v1/leases", post_lease)
    app.router.add_get("/v1/leases/{tenant}", get_leases)
