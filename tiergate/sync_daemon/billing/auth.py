"""The billing API's request bodies, bearer check and parsing (TIERGATE_API_TOKEN)."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from tiergate.errors import BadRequestError, BillingDisabledError
from tiergate.models import TenantId
from tiergate.sync_daemon.state import SETTINGS
from tiergate.web import require_bearer

M = TypeVar("M", bound=BaseModel)
Url = Annotated[str, Field(pattern=r"^https?://", max_length=2000)]
StripeRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,200}$")]  # a coupon id, a promotion code


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckoutRequest(_Body):
    tenant: TenantId
    tier: str
    interval: str = "month"
    quantity: Annotated[int, Field(ge=1, le=100_000)] = 1
    success_url: Url
    cancel_url: Url
    # Each of these replaces the catalog's `checkout:` default for this session only.
    promotion_code: StripeRef | None = None  # a `promo_...` id or the code a customer would type
    coupon: StripeRef | None = None
    allow_promotion_codes: bool | None = None
    automatic_tax: bool | None = None
    tax_id_collection: bool | None = None
    billing_address_collection: Literal["auto", "required"] | None = None
    currency: Annotated[str, Field(pattern=r"^[a-z]{3}$")] | None = None


class PortalRequest(_Body):
    tenant: TenantId
    return_url: Url


class ChangeRequest(_Body):
    tier: str | None = None
    interval: str | None = None
    quantity: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Unix seconds, as POST .../preview returned it: Stripe prorates as if changed at that moment.
    proration_date: Annotated[StrictInt, Field(ge=0)] | None = None


class CancelRequest(_Body):
    at_period_end: bool = True


def authorize(request: web.Request) -> None:
    token = request.app[SETTINGS].api_token
    if token is None:
        raise BillingDisabledError("the billing API is off: set TIERGATE_API_TOKEN to enable it")
    require_bearer(request, token.get_secret_value(), "TIERGATE_API_TOKEN")


def path_tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"].strip()
    if not tenant or len(tenant) > 200:
        raise BadRequestError("the tenant in the path must be 1 to 200 characters", field="tenant")
    return tenant


async def parse_body(request: web.Request, model: type[M], *, empty_ok: bool = False) -> M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or (b"{}" if empty_ok else b""))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequestError(f"{field}: {err['msg']}", field=field) from None
