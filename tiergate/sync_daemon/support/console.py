"""The support console at /console: server-rendered pages (readable without JavaScript) over the
daemon's own reads, sign-in with a console token, overrides changed with a reason and audited.

It lives in the daemon and reads the mirror: no decision path goes through it. Every page is
rendered by Jinja2 with autoescaping, so a tenant id or an event property is text, never markup;
the Content-Security-Policy allows no script at all.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import jinja2
import structlog
from aiohttp import web

from tiergate.errors import BadRequestError, NotFoundError, TierError
from tiergate.sync_daemon.credits.ledger import recent_entries
from tiergate.sync_daemon.mirror.overrides import Override, remove_override, set_override
from tiergate.sync_daemon.mirror.schema import DECISION_RECORDS, USAGE_EVENTS
from tiergate.sync_daemon.mirror.store import Sql
from tiergate.sync_daemon.overrides import OverrideRequest
from tiergate.sync_daemon.settings import DaemonSettings
from tiergate.sync_daemon.sinks.service import sinks_status
from tiergate.sync_daemon.state import CATALOG, FLEET, LEADER, MIRROR, RECONCILER, SETTINGS
from tiergate.sync_daemon.support import session as sessions
from tiergate.sync_daemon.support.api import tenant_view
from tiergate.sync_daemon.support.charts import cumulative, period_days, usage_chart
from tiergate.sync_daemon.support.decisions import explain
from tiergate.sync_daemon.support.session import COOKIE, Session
from tiergate.web import validate

log = structlog.get_logger("tiergate.console")

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("tiergate.sync_daemon.support", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DENIALS_SHOWN = 20
LEDGER_PAGE = 50  # credit ledger entries a console page shows
Page = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def tokens(settings: DaemonSettings) -> tuple[str, str]:
    """The console's (read-only, operator) token settings, each possibly a comma-separated list."""
    reader = settings.console_token.get_secret_value() if settings.console_token else ""
    operator = settings.console_operator_token.get_secret_value() if settings.console_operator_token else ""
    return reader, operator


def render(name: str, status: int = 200, **context: Any) -> web.Response:
    body = TEMPLATES.get_template(name).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", headers=HEADERS)


def current_session(request: web.Request) -> Session | None:
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    return sessions.read_cookie(value, *tokens(request.app[SETTINGS]), sessions.now())


def page(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Signed in, or sent to the sign-in page; an error becomes a page naming what was wrong."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = current_session(request)
        if session is None:
            raise web.HTTPSeeOther("/console/sign-in")
        try:
            return await handler(request, session)
        except TierError as exc:
            return render("error.html", exc.status, session=session, error=exc)

    return wrapped


def csrf_checked(handler: Page) -> Page:
    """A POST from one of our own forms: it carries the session's CSRF token."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request, session: Session) -> web.StreamResponse:
        form = await request.post()
        if not sessions.check_csrf(session, str(form.get("csrf", ""))):
            raise BadRequestError("the form's CSRF token is missing or stale: reload the page", field="csrf")
        return await handler(request, session)

    return wrapped


def change(handler: Page) -> Page:
    """A POST that changes something: the session's CSRF token and the operator's role."""

    @csrf_checked
    @functools.wraps(handler)
    async def wrapped(request: web.Request, session: Session) -> web.StreamResponse:
        if not session.may_change:
            return render("error.html", 403, session=session, error=_forbidden())
        return await handler(request, session)

    return wrapped


def _forbidden() -> TierError:
    error = TierError("this session is read-only: sign in with TIERGATE_CONSOLE_OPERATOR_TOKEN to change")
    error.status = 403
    return error


# -- sign-in -------------------------------------------------------------------------------------


async def sign_in_form(request: web.Request) -> web.Response:
    return render("sign_in.html", session=None, error=None)


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token, actor = str(form.get("token", "")).strip(), str(form.get("actor", "")).strip()
    if not 0 < len(actor) <= 100:
        return render("sign_in.html", 400, session=None, error="actor: give your name (1 to 100 characters)")
    session = sessions.sign_in(token, actor, *tokens(request.app[SETTINGS]), sessions.now())
    if session is None:
        log.warning("console_sign_in_refused", actor=actor)
        return render("sign_in.html", 401, session=None, error="token: not a console token")
    log.info("console_signed_in", actor=actor, role=session.role)
    response = web.HTTPSeeOther("/console")  # raised: aiohttp answers it with the cookie set
    response.set_cookie(
        COOKIE,
        session.cookie(),
        max_age=sessions.SESSION_S,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


@page
@csrf_checked
async def sign_out(request: web.Request, session: Session) -> web.StreamResponse:
    response = web.HTTPSeeOther("/console/sign-in")
    response.del_cookie(COOKIE, path="/console")
    raise response


# -- reading -------------------------------------------------------------------------------------


@page
async def search(request: web.Request, session: Session) -> web.StreamResponse:
    from tiergate.sync_daemon.mirror.lookup import search_tenants

    query = request.query.get("q", "").strip()[:200]
    found = await request.app[MIRROR].read(lambda sql: search_tenants(sql, query, 50)) if query else []
    return render("search.html", session=session, q=query, tenants=found)


@page
async def tenant_page(request: web.Request, session: Session) -> web.StreamResponse:
    tenant = request.match_info["tenant"]
    if not 0 < len(tenant) <= 200:
        raise BadRequestError("the tenant must be 1 to 200 characters", field="tenant")
    view = await tenant_view(request.app, tenant)
    denials, charts = await request.app[MIRROR].read(
        lambda sql: (recent_denials(sql, tenant), usage_by_day(sql, view))
    )
    return render(
        "tenant.html",
        session=session,
        view=view,
        denials=denials,
        charts=charts,
        features=sorted(request.app[CATALOG].features),
        sells_credits=bool(request.app[CATALOG].credits),  # else no credits column or section
    )


@page
async def credit_ledger_page(request: web.Request, session: Session) -> web.StreamResponse:
    """The tenant's credit ledger, newest first, LEDGER_PAGE entries a page (`?before=` an entry id)."""
    tenant = request.match_info["tenant"]
    if not 0 < len(tenant) <= 200:
        raise BadRequestError("the tenant must be 1 to 200 characters", field="tenant")
    before = ledger_before(request.query.get("before"))
    entries = await request.app[MIRROR].read(lambda sql: recent_entries(sql, tenant, LEDGER_PAGE, before))
    older = entries[-1]["id"] if len(entries) == LEDGER_PAGE else None
    return render(
        "credit_ledger.html",
        session=session,
        tenant=tenant,
        entries=entries,
        before=before,
        older=older,
        page_size=LEDGER_PAGE,
    )


def ledger_before(text: str | None) -> int | None:
    """`?before=`: an entry id (a whole number from 1), or none for the newest page."""
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 2**62:
        raise BadRequestError(f"before: give an entry id (a whole number), got {text[:50]!r}", field="before")
    return int(text)


def recent_denials(sql: Sql, tenant: str) -> list[dict[str, Any]]:
    rows = sql.execute(
        f"SELECT decision_id, feature, reason, at FROM {DECISION_RECORDS} WHERE tenant = ? AND allow = 0 "
        "ORDER BY at DESC LIMIT ?",
        [tenant, DENIALS_SHOWN],
    ).fetchall()
    return [dict(zip(("decision_id", "feature", "reason", "at"), row, strict=True)) for row in rows]


def usage_by_day(sql: Sql, view: dict[str, Any]) -> list[dict[str, Any]]:
    """A chart per metered feature with a limit: the period's usage so far, day by day."""
    period = view["entitlements"].get("period")
    if not period:
        return []
    start, end = _day(period["start"]), _day(period["end"])
    days = period_days(start, end)
    charts = []
    for feature, answer in view["entitlements"]["features"].items():
        if answer["limit"] is None:
            continue
        if answer.get("window"):  # counted per window: a chart over the period would mislead
            charts.append({**_chart_head(feature, answer), "svg": None, "window": answer["window"]})
            continue
        rows = sql.execute(
            f"SELECT substr(timestamp, 1, 10), SUM(value) FROM {USAGE_EVENTS} "
            "WHERE tenant = ? AND code = ? AND timestamp >= ? AND timestamp < ? GROUP BY substr(timestamp, 1, 10)",
            [view["tenant"], feature, period["start"], period["end"]],
        ).fetchall()
        daily = {str(day): float(total) for day, total in rows}
        totals = cumulative(days, daily)
        charts.append(
            {**_chart_head(feature, answer), "svg": usage_chart(feature, days, totals, answer["limit"])}
        )
    return charts


def _chart_head(feature: str, answer: dict[str, Any]) -> dict[str, Any]:
    return {"feature": feature, "used": answer["used"], "limit": answer["limit"], "window": None}


def _day(text: str) -> date:
    return datetime.fromisoformat(text).astimezone(UTC).date()


@page
async def decision_page(request: web.Request, session: Session) -> web.StreamResponse:
    explained = await explain(request.app, request.match_info["decision_id"])
    return render("decision.html", session=session, x=explained)


@page
async def fleet_page(request: web.Request, session: Session) -> web.StreamResponse:
    app = request.app
    mirror = app[MIRROR]
    failures = await mirror.read(
        lambda sql: sql.execute("SELECT sink, COUNT(*) FROM sink_failures GROUP BY sink").fetchall()
    )
    return render(
        "fleet.html",
        session=session,
        head=mirror.seq,
        followers=app[FLEET].view(mirror.seq),
        leader=app[LEADER].status(),
        mirror_lag_s=app[RECONCILER].lag.seconds(),
        backend=mirror.backend,
        sinks=sinks_status(app),
        failures={str(sink): int(n) for sink, n in failures},
    )


# -- changes -------------------------------------------------------------------------------------


def parse_value(text: str) -> object:
    """`true`, `false`, `unlimited` or a whole number (a limit), as the override API takes it."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "unlimited":
        return {}
    if lowered.isdigit():
        return {"limit": int(lowered)}
    raise BadRequestError(f"value: give true, false, unlimited or a limit, got {text[:50]!r}", field="value")


@page
@change
async def add_override(request: web.Request, session: Session) -> web.StreamResponse:
    tenant = request.match_info["tenant"]
    form = await request.post()
    feature = str(form.get("feature", ""))
    if feature not in request.app[CATALOG].features:
        raise BadRequestError(f"feature: {feature[:100]!r} is in no tier's features", field="feature")
    days = str(form.get("days", "")).strip()
    expires = None
    if days:
        if not days.isdigit() or not 0 < int(days) <= 3650:
            raise BadRequestError(
                "days: give a whole number of days from 1 to 3650, or leave it empty", field="days"
            )
        expires = (datetime.now(UTC) + timedelta(days=int(days))).isoformat()
    body = validate(
        OverrideRequest,
        {
            "value": parse_value(str(form.get("value", ""))),
            "reason": str(form.get("reason", "")).strip(),
            "expires_at": expires,
            "actor": session.actor,
        },
    )
    wanted = Override(tenant, feature, body.value, body.expires_at, body.reason, body.actor)
    await request.app[MIRROR].transact(lambda txn: set_override(txn, wanted))
    log.info("console_change", action="override_set", tenant=tenant, feature=feature, actor=session.actor)
    raise web.HTTPSeeOther(tenant_url(tenant))


@page
@change
async def remove_override_action(request: web.Request, session: Session) -> web.StreamResponse:
    tenant, feature = request.match_info["tenant"], request.match_info["feature"]
    reason = str((await request.post()).get("reason", "")).strip()
    if not 0 < len(reason) <= 500:
        raise BadRequestError("reason: say why (1 to 500 characters)", field="reason")
    removed = await request.app[MIRROR].transact(
        lambda txn: remove_override(txn, tenant, feature, reason, session.actor)
    )
    if not removed:
        raise NotFoundError(f"tenant {tenant!r} has no override for {feature!r}")
    log.info("console_change", action="override_removed", tenant=tenant, feature=feature, actor=session.actor)
    raise web.HTTPSeeOther(tenant_url(tenant))


def tenant_url(tenant: str) -> str:
    from urllib.parse import quote

    return "/console/tenants/" + quote(tenant, safe="")


def asset(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """One committed file of static/, served as it is (no CDN, nothing built)."""
    text = resources.files("tiergate.sync_daemon.support").joinpath(f"static/{name}").read_text()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type=content_type, headers={"Cache-Control": "max-age=300"})

    return serve


def add_console_routes(app: web.Application) -> None:
    TEMPLATES.globals["tenant_url"] = tenant_url
    app.router.add_get("/console", search)
    app.router.add_get("/console/sign-in", sign_in_form)
    app.router.add_post("/console/sign-in", sign_in)
    app.router.add_post("/console/sign-out", sign_out)
    app.router.add_get("/console/fleet", fleet_page)
    app.router.add_get("/console/tenants/{tenant}", tenant_page)
    app.router.add_get("/console/tenants/{tenant}/credits/ledger", credit_ledger_page)
    app.router.add_post("/console/tenants/{tenant}/overrides", add_override)
    app.router.add_post("/console/tenants/{tenant}/overrides/{feature}/remove", remove_override_action)
    app.router.add_get("/console/decisions/{decision_id}", decision_page)
    app.router.add_get("/console/static/console.css", asset("console.css", "text/css"))
    app.router.add_get("/console/static/favicon.svg", asset("favicon.svg", "image/svg+xml"))
