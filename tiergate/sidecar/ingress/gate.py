"""The ingress hook's one decision, whichever protocol asked (HTTP auth_request / ForwardAuth /
ext_authz, or gRPC ext_authz): request -> tenant -> route -> feature and usage decisions -> Verdict."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

import structlog

from tiergate.errors import TierError
from tiergate.models import Decision
from tiergate.periods import parse_rfc3339, seconds_until
from tiergate.sidecar.decisions.service import DecisionService, RouteResolver
from tiergate.sidecar.ingress.hook import (
    Verdict,
    after_consuming,
    decisions_verdict,
    denial_body,
    error_verdict,
    original_request,
)
from tiergate.sidecar.ingress.identity import TenantIdentity
from tiergate.sidecar.ingress.replays import ReplayWindow
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.usage.recorder import Reservation

log = structlog.get_logger("tiergate.ingress")

Reserve = Callable[[str, str, int, str | None], Awaitable[tuple[Decision, Reservation]]]


class IngressGate:
    def __init__(
        self,
        *,
        identity: TenantIdentity,
        routes: RouteResolver,
        decisions: DecisionService,
        metrics: SidecarMetrics,
        reserve: Reserve | None,
        request_id_header: str | None = None,
        replays: ReplayWindow | None = None,
    ) -> None:
        self.identity = identity
        self.routes = routes
        self.decisions = decisions
        self.metrics = metrics
        self.reserve = reserve  # None: usage is decided but not recorded (TIERGATE_AUTHZ_RECORD_USAGE)
        self.request_id_header = request_id_header
        self.replays = replays if request_id_header else None
        # Keyed requests being counted now: a retry that overlaps its original waits for its answer.
        self._counting: dict[tuple[str, str, str, str], asyncio.Future[Decision]] = {}

    def proxy_headers(self) -> tuple[str, ...]:
        return (self.request_id_header,) if self.request_id_header else ()

    async def authorize(self, headers: Mapping[str, str], method: str, path: str) -> Verdict:
        """`headers` must look names up case-insensitively (aiohttp's and multidict's do)."""
        verdict = await self._authorize(headers, method, path)
        self.metrics.authz.labels(str(verdict.status), verdict.reason).inc()
        return verdict

    def refuse(self, exc: TierError) -> Verdict:
        """The verdict on a call too malformed to reach `authorize` (counted and logged the same way)."""
        log.warning("authz_malformed_call", error=exc.message, field=exc.field)
        verdict = error_verdict(exc.status, exc.code, exc.message, exc.field)
        self.metrics.authz.labels(str(verdict.status), verdict.reason).inc()
        return verdict

    async def _authorize(self, headers: Mapping[str, str], method: str, path: str) -> Verdict:
        try:
            method, path = original_request(headers, method, path)
            tenant = self.identity.tenant(headers)
        except TierError as exc:
            if exc.status == 400:
                log.warning("authz_malformed_call", error=exc.message, field=exc.field)
            return error_verdict(exc.status, exc.code, exc.message, exc.field)
        try:
            route = await self.routes.resolve(method, path)
        except TierError as exc:
            self.metrics.engine_errors.labels("ingress").inc()
            return Verdict(403, "policy_error", {}, denial_body("policy_error", str(exc), method, path))
        if not route["matched"]:
            if route.get("action") == "deny":
                body = denial_body("unmatched_route", "no route matches", method, path)
                return Verdict(403, "unmatched_route", {}, body)
            return Verdict(200, "unmatched", {"X-Tiergate-Tenant": header_safe(tenant)})
        decisions = [await self.decisions.decide(tenant, route["feature"], 1)] if route.get("feature") else []
        if route.get("usage") and all(d.allow for d in decisions):
            decisions.append(await self._consume(headers, tenant, route["usage"], method, path))
        denied = next((d for d in decisions if not d.allow), None)
        retry = seconds_until(parse_rfc3339(denied.valid_until), datetime.now(UTC)) if denied else None
        verdict = decisions_verdict(decisions, retry, method, path)
        if verdict.allow:
            verdict.headers["X-Tiergate-Tenant"] = header_safe(tenant)
        return verdict

    async def _consume(
        self, headers: Mapping[str, str], tenant: str, metric: str, method: str, path: str
    ) -> Decision:
        """The route's usage, checked and recorded in one step (a reserve). A proxy's retry (same
        proxy-made request id, same tenant and request, within the window) is not counted again and
        passes only while the limit still holds with the original unit counted: never deny -> allow.
        A retry that arrives while its original is still being counted gets the original's answer."""
        if self.reserve is None:
            return await self.decisions.decide(tenant, metric, 1)
        key = headers.get(self.request_id_header) if self.request_id_header else None
        if not key or self.replays is None:
            return await self._reserve_one(tenant, metric)
        if self.replays.counted(key, tenant, method, path):
            return await self.decisions.decide(tenant, metric, 0)
        request = (key, tenant, method, path)
        original = self._counting.get(request)
        if original is not None:  # the proxy retried before the first attempt was answered
            return await asyncio.shield(original)
        answer: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._counting[request] = answer
        try:
            decision = await self._reserve_one(tenant, metric)
        except asyncio.CancelledError:
            answer.cancel()
            raise
        except Exception as exc:
            answer.set_exception(exc)
            answer.exception()  # retrieved: a lone original must not log "never retrieved"
            raise
        finally:
            del self._counting[request]
        answer.set_result(decision)
        if decision.allow:
            self.replays.remember(key, tenant, method, path)
        return decision

    async def _reserve_one(self, tenant: str, metric: str) -> Decision:
        assert self.reserve is not None
        decision, reservation = await self.reserve(tenant, metric, 1, None)
        return after_consuming(decision) if reservation.reserved else decision


def header_safe(value: str) -> str:
    """A tenant id as a header value: ASCII ids unchanged, anything else percent-encoded."""
    return value if value.isascii() and value.isprintable() else quote(value, safe="")
