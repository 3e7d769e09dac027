"""A FastAPI dependency (or a Starlette helper) that refuses a request whose tenant may not use a feature.

    gate = FeatureGate(client)
    app = FastAPI(exception_handlers={FeatureDenied: render_denial})

    @app.get("/reports")
    async def reports(decision: Annotated[Decision, Depends(gate.requires("reports"))]) -> dict[str, str]: ...

Without `render_denial` FastAPI still answers the status, with the denial under `detail`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from tiergate.client.aio import AsyncTiergateClient
from tiergate.client.gate import DECISION_KEY, Denial, denial, no_tenant
from tiergate.models import Decision


class FeatureDenied(HTTPException):
    """A 401/403/429 with the denial as its JSON `detail` (FastAPI renders `{"detail": {...}}`)."""

    def __init__(self, refused: Denial) -> None:
        super().__init__(refused.status, detail=refused.body, headers=refused.headers or None)
        self.body = refused.body


class FeatureGate:
    def __init__(self, client: AsyncTiergateClient, *, tenant_header: str = "X-Tenant-Id") -> None:
        self.client = client
        self.tenant_header = tenant_header

    def requires(self, feature: str, quantity: int = 1) -> Callable[[Request], Awaitable[Decision]]:
        """A dependency answering the allowed decision, or raising `FeatureDenied`."""

        async def dependency(request: Request) -> Decision:
            return await self.check(request, feature, quantity)

        return dependency

    async def check(self, request: Request, feature: str, quantity: int = 1) -> Decision:
        """For Starlette endpoints without dependency injection: call it first thing."""
        tenant = request.headers.get(self.tenant_header, "").strip()
        if not tenant:
            raise FeatureDenied(no_tenant(self.tenant_header))
        decision = await self.client.check(tenant, feature, quantity)
        refused = denial(decision)
        if refused is not None:
            raise FeatureDenied(refused)
        setattr(request.state, DECISION_KEY, decision)
        return decision


async def render_denial(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler giving the same body as the sidecar's `/v1/authz` and the aiohttp gate."""
    assert isinstance(exc, FeatureDenied)
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)
