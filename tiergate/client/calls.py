"""The client's calls, without I/O: each operation as a request to send and a parser of the answer.

Both transports (`sync.py`, `aio.py`) only move bytes; everything a call means lives here, so the
two clients cannot drift apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import SplitResult, quote, urlencode, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from tiergate.errors import SidecarRejectedError, SidecarUnreachableError
from tiergate.models import Account, Decision

T = TypeVar("T")

FailMode = Literal["fail_closed", "fail_open"]
# Which of the sidecar's listeners a call goes to: the main port (`base_url`, every route) or the
# check listener (`check_url`, TIERGATE_CHECK_PORT: GET /v1/check alone, about half the CPU).
Endpoint = Literal["main", "check"]
FAIL_MODES: tuple[FailMode, ...] = ("fail_closed", "fail_open")
# The reason of a decision the client made itself because the sidecar gave no answer.
UNREACHABLE = "sidecar_unreachable"
MAX_USAGE_BATCH = 100  # the sidecar's own limit for POST /v1/usage/batch


@dataclass(frozen=True)
class FailPolicy:
    """What a check answers when the sidecar gives none: deny (`fail_closed`, the default) or allow."""

    default: FailMode = "fail_closed"
    features: Mapping[str, FailMode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, mode in {"default": self.default, **self.features}.items():
            if mode not in FAIL_MODES:
                raise ValueError(f"fail policy for {name!r} is {mode!r}; expected one of {FAIL_MODES}")
        object.__setattr__(self, "features", MappingProxyType(dict(self.features)))

    def decision(self, tenant: str, feature: str, quantity: int) -> Decision:
        allow = self.features.get(feature, self.default) == "fail_open"
        return Decision(
            allow=allow,
            reason=UNREACHABLE,
            tier=None,
            tenant=tenant,
            feature=feature,
            quantity=quantity,
            stale=True,
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """A check-and-reserve: the decision, and whether the quantity was recorded."""

    decision: Decision
    transaction_id: str
    reserved: bool
    replayed: bool = False

    @property
    def allow(self) -> bool:
        return self.decision.allow


class HoldState(BaseModel):
    """A hold as the sidecar keeps it: `held` (counting against the limit), then `settled`,
    `released` or `expired`; `replayed` when the call repeated an earlier one."""

    model_config = ConfigDict(frozen=True)

    hold_id: str
    transaction_id: str
    tenant: str
    feature: str
    held: int
    state: Literal["held", "settled", "released", "expired"]
    expires_at: str | None = None
    settled_quantity: int | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """POST /v1/holds: the decision and, when allowed, the hold (None: nothing held)."""

    decision: Decision
    transaction_id: str
    state: HoldState | None

    @property
    def allow(self) -> bool:
        return self.decision.allow

    @property
    def hold_id(self) -> str | None:
        return None if self.state is None else self.state.hold_id


Overage = Literal["reject", "cap", "allow"]


class FeatureAccess(BaseModel):
    model_config = ConfigDict(frozen=True)

    allow: bool
    reason: str
    limit: int | None = None
    used: int = 0
    remaining: int | None = None
    valid_until: str | None = None
    source: str = "plan"  # `override` when a per-tenant override decides it (older sidecars: plan)


class PendingChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    tier: str
    interval: str | None = None
    at: str | None = None


class Entitlements(BaseModel):
    """GET /v1/entitlements/{tenant}: the tier, the account and every feature's decision."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    tier: str | None
    account: Account | None = None
    pending_change: PendingChange | None = None
    features: Mapping[str, FeatureAccess]
    policy_revision: str | None = None
    data_as_of: str | None = None
    stale: bool = False


class UsageReceipt(BaseModel):
    """One usage event as the sidecar took it: `accepted`, or `duplicate` (a replayed transaction id)."""

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    external_customer_id: str
    code: str
    status: Literal["accepted", "duplicate"]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: what to send, how to read a 2xx, and what to answer when none comes.

    Every call is safe to retry: checks change nothing, and usage and reserves carry transaction
    ids fixed here, before the first attempt, so the sidecar counts a retried one once."""

    method: str
    path: str
    body: bytes | None
    parse: Callable[[Any], T]
    unreachable: Callable[[], T] | None = None  # the fail policy's answer; None: raise
    endpoint: Endpoint = "main"


def client_options(base_url: str, timeout_s: float, retries: int, pool_size: int) -> SplitResult:
    """Both clients' constructor checks; the parsed sidecar URL."""
    parts = sidecar_url("base_url", base_url)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if retries < 0 or pool_size < 1:
        raise ValueError(f"retries must be >= 0 and pool_size >= 1, got {retries} and {pool_size}")
    return parts


def sidecar_url(name: str, url: str) -> SplitResult:
    """`url` parsed, or a ValueError naming the option (`base_url`, `check_url`)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{name} {url!r} must be http://host[:port] (the sidecar is on localhost)")
    return parts


def check(
    policy: FailPolicy, tenant: str, feature: str, quantity: int = 1, *, endpoint: Endpoint = "main"
) -> Call[Decision]:
    """POST /v1/check on the main port, or GET /v1/check?... on the check listener: same answers."""
    if endpoint == "check":
        query = urlencode({"tenant": tenant, "feature": feature, "quantity": quantity}, quote_via=quote)
        path, method, body = "/v1/check?" + query, "GET", None
    else:
        fields = {"tenant": tenant, "feature": feature, "quantity": quantity}
        path, method, body = "/v1/check", "POST", orjson.dumps(fields)
    return Call(
        method,
        path,
        body,
        lambda raw: _decision(raw),
        lambda: policy.decision(tenant, feature, quantity),
        endpoint,
    )


def check_batch(policy: FailPolicy, checks: Sequence[tuple[str, str, int]]) -> Call[tuple[Decision, ...]]:
    body = {"checks": [{"tenant": t, "feature": f, "quantity": q} for t, f, q in checks]}

    def parse(raw: Any) -> tuple[Decision, ...]:
        decisions = _field(raw, "decisions", list)
        if len(decisions) != len(checks):
            raise _malformed(f"{len(decisions)} decisions for {len(checks)} checks")
        return tuple(_decision(d) for d in decisions)

    return Call(
        "POST",
        "/v1/check/batch",
        orjson.dumps(body),
        parse,
        lambda: tuple(policy.decision(t, f, q) for t, f, q in checks),
    )


def reserve(
    policy: FailPolicy, tenant: str, feature: str, quantity: int = 1, transaction_id: str | None = None
) -> Call[Reservation]:
    tid = transaction_id or new_transaction_id()
    body = {
        "tenant": tenant,
        "feature": feature,
        "quantity": quantity,
        "reserve": True,
        "transaction_id": tid,
    }

    def parse(raw: Any) -> Reservation:
        reservation = _field(raw, "reservation", dict)
        return Reservation(
            decision=_decision(raw),
            transaction_id=str(reservation.get("transaction_id", tid)),
            reserved=bool(reservation.get("reserved")),
            replayed=bool(reservation.get("replayed")),
        )

    def unreachable() -> Reservation:
        return Reservation(
            decision=policy.decision(tenant, feature, quantity), transaction_id=tid, reserved=False
        )

    return Call("POST", "/v1/check", orjson.dumps(body), parse, unreachable)


def hold(
    policy: FailPolicy,
    tenant: str,
    feature: str,
    quantity: int,
    ttl_s: int | None,
    transaction_id: str | None,
) -> Call[Hold]:
    """POST /v1/holds; with no answer, the fail policy's decision and nothing held."""
    tid = transaction_id or new_transaction_id()
    body: dict[str, Any] = {"tenant": tenant, "feature": feature, "quantity": quantity, "transaction_id": tid}
    if ttl_s is not None:
        body["ttl_s"] = ttl_s

    def parse(raw: Any) -> Hold:
        state = _model(HoldState, raw) if isinstance(raw, dict) and raw.get("hold_id") else None
        return Hold(decision=_decision(raw), transaction_id=tid, state=state)

    def unreachable() -> Hold:
        return Hold(decision=policy.decision(tenant, feature, quantity), transaction_id=tid, state=None)

    return Call("POST", "/v1/holds", orjson.dumps(body), parse, unreachable)


def settle_hold(hold_id: str, quantity: int, overage: Overage = "reject") -> Call[HoldState]:
    """Record the real quantity (the same call again answers `replayed`: safe to retry)."""
    body = orjson.dumps({"quantity": quantity, "overage": overage})
    return Call("POST", _hold_path(hold_id) + "/settle", body, lambda raw: _model(HoldState, raw))


def extend_hold(hold_id: str, ttl_s: int) -> Call[HoldState]:
    body = orjson.dumps({"ttl_s": ttl_s})
    return Call("POST", _hold_path(hold_id) + "/extend", body, lambda raw: _model(HoldState, raw))


def release_hold(hold_id: str) -> Call[HoldState]:
    return Call("DELETE", _hold_path(hold_id), None, lambda raw: _model(HoldState, raw))


def _hold_path(hold_id: str) -> str:
    return "/v1/holds/" + quote(hold_id, safe="")


def entitlements(tenant: str) -> Call[Entitlements]:
    return Call(
        "GET", "/v1/entitlements/" + quote(tenant, safe=""), None, lambda raw: _model(Entitlements, raw)
    )


def record_usage(events: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Call[tuple[UsageReceipt, ...]]:
    """One event (POST /v1/usage) or a batch of up to 100 (all recorded or none)."""
    if isinstance(events, Mapping):
        body = {"event": with_transaction_id(events)}
        return Call(
            "POST",
            "/v1/usage",
            orjson.dumps(body),
            lambda raw: (_model(UsageReceipt, _field(raw, "event", dict)),),
        )
    if not 1 <= len(events) <= MAX_USAGE_BATCH:
        raise ValueError(f"a usage batch holds 1 to {MAX_USAGE_BATCH} events, got {len(events)}")
    batch = {"events": [with_transaction_id(e) for e in events]}
    return Call(
        "POST",
        "/v1/usage/batch",
        orjson.dumps(batch),
        lambda raw: tuple(_model(UsageReceipt, r) for r in _field(raw, "events", list)),
    )


def with_transaction_id(event: Mapping[str, Any]) -> dict[str, Any]:
    """A Lago event with its idempotency key: the caller's, else a new one (fixed before any retry)."""
    if not isinstance(event, Mapping):
        raise TypeError(f"a usage event is a mapping in Lago's shape, got {type(event).__name__}")
    return {**event, "transaction_id": event.get("transaction_id") or new_transaction_id()}


def new_transaction_id() -> str:
    return uuid.uuid4().hex


def answer(call: Call[T], status: int, payload: bytes, where: str) -> T:
    """The result of `call` given the sidecar's status and body (`where` names the sidecar)."""
    if 200 <= status < 300:
        try:
            return call.parse(orjson.loads(payload))
        except orjson.JSONDecodeError as exc:
            raise _malformed(f"body is not JSON ({exc})") from None
    error = _error_of(payload)
    message = str(error.get("message") or f"HTTP {status}")
    if status >= 500:
        raise SidecarUnreachableError(f"{call.method} {where}{call.path} answered {status}: {message}")
    raise SidecarRejectedError(
        f"{call.method} {where}{call.path} refused the call ({status}): {message}",
        code=str(error.get("code") or "bad_request"),
        status=status,
        field=error.get("field") if isinstance(error.get("field"), str) else None,
    )


def _error_of(payload: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


M = TypeVar("M", bound=BaseModel)


def _decision(raw: Any) -> Decision:
    try:
        return Decision.from_json(raw)
    except ValidationError as exc:
        raise _malformed(f"not a Decision: {exc.errors(include_url=False)[0]['msg']}") from None


def _model(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _malformed(f"not a {model.__name__}: {exc.errors(include_url=False)[0]['msg']}") from None


def _field(raw: Any, name: str, kind: type[T]) -> T:
    value = raw.get(name) if isinstance(raw, dict) else None
    if not isinstance(value, kind):
        raise _malformed(f"no {name!r} {kind.__name__} in the answer")
    return value


def _malformed(what: str) -> SidecarUnreachableError:
    return SidecarUnreachableError(f"the sidecar's answer is unusable: {what}")
