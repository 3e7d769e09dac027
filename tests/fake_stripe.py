"""RecordingStripeHTTP: a `stripe.HTTPClient` that records each request and answers from fixtures3.json.

For the Stripe calls localstripe lacks (Checkout, portal, Prices, schedules, proration). Tests
assert on the exact form parameters the library sent (`line_items[0][price]`, ...) and get real
Stripe object shapes back. Answers are Stripe's example objects with the request's id and the
test's overrides applied; `fail(...)` makes a route answer with a Stripe error instead.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe
from multidict import CIMultiDict

from tests.stripe_payloads import FIXTURES

Body = dict[str, Any]


@cache
def _resources() -> dict[str, Body]:
    loaded: dict[str, Body] = json.loads((FIXTURES / "fixtures3.json").read_text())["resources"]
    return loaded


def fixture(resource: str, /, **overrides: Any) -> Body:
    """A deep copy of Stripe's example `resource` object with top-level fields overridden."""
    return {**copy.deepcopy(_resources()[resource]), **overrides}


def listing(objects: list[Body], url: str) -> Body:
    return {"object": "list", "data": objects, "has_more": False, "url": url}


# (method, path pattern) -> the fixture resource that answers it.
ROUTES: list[tuple[str, str, str]] = [
    ("POST", r"/v1/customers", "customer"),
    ("GET", r"/v1/customers/(?P<id>[^/]+)", "customer"),
    ("POST", r"/v1/checkout/sessions", "checkout.session"),
    ("POST", r"/v1/billing_portal/sessions", "billing_portal.session"),
    ("GET", r"/v1/subscriptions/(?P<id>[^/]+)", "subscription"),
    ("POST", r"/v1/subscriptions/(?P<id>[^/]+)", "subscription"),
    ("DELETE", r"/v1/subscriptions/(?P<id>[^/]+)", "subscription"),
    ("POST", r"/v1/subscription_schedules", "subscription_schedule"),
    ("POST", r"/v1/subscription_schedules/(?P<id>[^/]+)", "subscription_schedule"),
    ("POST", r"/v1/subscription_schedules/(?P<id>[^/]+)/release", "subscription_schedule"),
    ("POST", r"/v1/invoices/create_preview", "invoice"),
    ("POST", r"/v1/prices", "price"),
    ("POST", r"/v1/prices/(?P<id>[^/]+)", "price"),
    ("POST", r"/v1/entitlements/features", "entitlements.feature"),
    ("POST", r"/v1/products/(?P<product>[^/]+)/features", "product_feature"),
    ("DELETE", r"/v1/products/(?P<product>[^/]+)/features/(?P<id>[^/]+)", "deleted_product_feature"),
    ("POST", r"/v1/products", "product"),
    ("POST", r"/v1/products/(?P<id>[^/]+)", "product"),
    ("POST", r"/v1/billing/meters", "billing.meter"),
    ("POST", r"/v1/billing/meter_events", "billing.meter_event"),
    ("POST", r"/v1/payment_intents", "payment_intent"),
]


# Lists a test need not fill: an account with no Entitlements Features yet.
EMPTY_UNLESS_GIVEN = r"entitlements/features|products/[^/]+/features"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str]  # form or query parameters, flat as sent: {"items[0][id]": "si_1"}
    headers: Mapping[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


Answer = Body | Callable[[Call], Body]


@dataclass
class RecordingStripeHTTP(stripe.HTTPClient):
    calls: list[Call] = field(default_factory=list)
    # GET /v1/<name> -> the list's data, or a function of the request that returns it
    lists: dict[str, list[Body] | Callable[[Call], list[Body]]] = field(default_factory=dict)
    overrides: dict[tuple[str, str], Answer] = field(default_factory=dict)
    failures: dict[tuple[str, str], tuple[int, Body]] = field(default_factory=dict)

    name = "recording-fake"

    def __post_init__(self) -> None:
        super().__init__()

    def answer(self, method: str, pattern: str, body: Answer) -> None:
        """Answer `method pattern` with `body` (or `body(call)`), merged over the fixture."""
        self.overrides[(method, pattern)] = body

    def fail(
        self, method: str, pattern: str, status: int, message: str, code: str = "resource_missing"
    ) -> None:
        error = {"type": "invalid_request_error", "message": message, "code": code}
        self.failures[(method, pattern)] = (status, {"error": error})

    def sent(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(path, c.path)]

    def only(self, method: str, path: str) -> Call:
        found = self.sent(method, path)
        assert len(found) == 1, f"expected one {method} {path}, got {len(found)}: {self.calls}"
        return found[0]

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        body, status, out = self._handle(method, url, headers or {}, post_data)
        return body.decode(), status, out

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        return self._handle(method, url, headers, post_data)

    def close(self) -> None:
        pass

    async def close_async(self) -> None:
        pass

    def _handle(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> tuple[bytes, int, Mapping[str, str]]:
        parts = urlsplit(url)
        raw = post_data.decode() if isinstance(post_data, bytes) else (post_data or parts.query)
        call = Call(method.upper(), parts.path, dict(parse_qsl(raw, keep_blank_values=True)), dict(headers))
        self.calls.append(call)
        status, body = self._respond(call)
        # Case-insensitive, as a real client's headers are (the library reads both spellings).
        out = CIMultiDict({"Request-Id": f"req_fake{len(self.calls)}", "Date": formatdate(usegmt=True)})
        return json.dumps(body).encode(), status, out

    def _respond(self, call: Call) -> tuple[int, Body]:
        for (method, pattern), failure in self.failures.items():
            if method == call.method and re.fullmatch(pattern, call.path):
                return failure
        name = call.path.removeprefix("/v1/")
        if call.method == "GET" and name in self.lists:
            data = self.lists[name]
            return 200, listing(data(call) if callable(data) else data, call.path)
        if call.method == "GET" and re.fullmatch(EMPTY_UNLESS_GIVEN, name):
            return 200, listing([], call.path)
        for method, pattern, resource in ROUTES:
            match = re.fullmatch(pattern, call.path)
            if method == call.method and match:
                body = fixture(resource)
                if match.groupdict().get("id"):
                    body["id"] = match["id"]
                return 200, {**body, **self._override(call)}
        return 404, {"error": {"type": "invalid_request_error", "message": f"no fake for {call.path}"}}

    def _override(self, call: Call) -> Body:
        for (method, pattern), answer in self.overrides.items():
            if method == call.method and re.fullmatch(pattern, call.path):
                return answer(call) if callable(answer) else answer
        return {}
