"""Shared pydantic models: the account a tenant holds, check requests and decisions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
)

from tiergate.amounts import Amount, Counter

Status = Literal[
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "paused",
]

# A subscription in these states has ended: no billing period of its own, the default tier's
# features (policies/entitlements.rego spells the same set `ended_statuses`).
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})

REASONS = (
    "ok",
    "not_in_plan",
    "limit_exceeded",
    "subscription_inactive",
    "payment_overdue",
    "trial_expired",
    "unknown_feature",
    "replica_stale",
    "policy_error",
    "replica_not_ready",
    "license_expired",
    "quota_unavailable",  # a leased metric: no unit in this sidecar's lease, none came in time
)

MAX_TENANT_LENGTH = 200
MAX_FEATURE_LENGTH = 100
# Control characters (C0, DEL, C1) in a tenant id are refused everywhere: a header cannot carry
# them, a log line or a Stripe dashboard would hide them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TENANT_RULE = f"a tenant id is 1 to {MAX_TENANT_LENGTH} characters without control characters"


def tenant_problem(tenant: str) -> str | None:
    """Why `tenant` (already stripped) breaks the one rule for tenant ids that the daemon and the
    sidecars apply (TENANT_RULE), or None."""
    if not tenant:
        return "must not be empty"
    if len(tenant) > MAX_TENANT_LENGTH:
        return f"longer than {MAX_TENANT_LENGTH} characters ({len(tenant)})"
    control = _CONTROL.search(tenant)
    if control is not None:
        return f"holds the control character U+{ord(control.group()):04X} ({TENANT_RULE})"
    return None


def _valid_tenant(tenant: str) -> str:
    problem = tenant_problem(tenant)
    if problem is not None:
        raise ValueError(problem)
    return tenant


TenantId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TENANT_LENGTH, strip_whitespace=True),
    AfterValidator(lambda tenant: _valid_tenant(tenant)),
]
FeatureName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_FEATURE_LENGTH, strip_whitespace=True)
]
# Quantities above this are certainly a bug in the caller, not a real request.
MAX_QUANTITY = 1_000_000_000
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY, strict=True)]


class Account(BaseModel):
    """What the replica knows about one tenant's subscription."""

    model_config = ConfigDict(extra="forbid")

    tenant: TenantId
    tier: str
    status: Status
    quantity: Annotated[int, Field(ge=0)] = 1
    current_period_start: AwareDatetime | None = None
    current_period_end: AwareDatetime | None = None
    trial_end: AwareDatetime | None = None
    cancel_at_period_end: bool = False
    past_due_since: AwareDatetime | None = None
    version: int = 0
    # A change scheduled for `pending_at` (a downgrade waits for the period end); None when none.
    pending_tier: str | None = None
    pending_interval: str | None = None
    pending_at: AwareDatetime | None = None
    # The Stripe subscription id: what a Lago event's `external_subscription_id` names.
    subscription_id: str | None = None
    # Catalog add-ons the subscription holds as extra items: add-on -> quantity.
    addons: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


# An account's fields in declaration order: the replica's columns and what the feed carries.
ACCOUNT_FIELDS: tuple[str, ...] = tuple(Account.model_fields)


class UsageCounter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TenantId
    code: str
    period_start: AwareDatetime
    value: Counter  # exact: an int, or a decimal (a string in JSON); below zero after an early correction

    def amount(self) -> Amount:
        """The exact counter."""
        return self.value


class CheckRequest(BaseModel):
    """One question: may `tenant` use `feature`, `quantity` more times?"""

    model_config = ConfigDict(extra="forbid")

    tenant: TenantId
    feature: FeatureName
    quantity: Quantity = 1


@dataclass(frozen=True, slots=True)
class PolicyAnswer:
    """What the policy decided, before the sidecar adds lineage; `valid_until` is RFC 3339 `Z`."""

    model_config = ConfigDict(frozen=True)

    allow: bool
    reason: str
    tier: str | None
    limit: int | None = None
    used: int = 0
    remaining: int | None = None
    valid_until: str | None = None
    paid_tier: str | None = None  # the tier the account pays for (`tier` is the one applied)
    # A signed license past its not-after date and still in grace: when the grace ends.
    license_grace_until: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The policy's answer plus the lineage the sidecar adds: what every decision route returns,
    and what the clients parse it back into.

    Times are RFC 3339 strings in UTC with a `Z` (`tiergate.periods.rfc3339`), as rendered.
    orjson serialises it as it is, fields in this order.
    """

    allow: bool
    reason: str
    tier: str | None
    limit: int | None = None
    used: int = 0
    remaining: int | None = None
    valid_until: str | None = None
    paid_tier: str | None = None  # the tier the account pays for (`tier` is the one applied)
    license_grace_until: str | None = None
    tenant: str
    feature: str
    quantity: int = 1
    decision_id: str = ""
    policy_revision: str = ""
    data_as_of: str | None = None
    stale: bool = False

    @classmethod
    def from_json(cls, raw: object) -> Decision:
        """A decision as a sidecar rendered it (extra keys, e.g. `reservation`, are ignored);
        raises pydantic's ValidationError."""
        return _DECISION_ADAPTER.validate_python(raw)

    @classmethod
    def of(
        cls,
        answer: PolicyAnswer,
        *,
        tenant: str,
        feature: str,
        quantity: int,
        decision_id: str,
        policy_revision: str,
        data_as_of: str | None,
        stale: bool,
    ) -> Decision:
        return cls(
            allow=answer.allow,
            reason=answer.reason,
            tier=answer.tier,
            limit=answer.limit,
            used=answer.used,
            remaining=answer.remaining,
            valid_until=answer.valid_until,
            paid_tier=answer.paid_tier,
            license_grace_until=answer.license_grace_until,
            tenant=tenant,
            feature=feature,
            quantity=quantity,
            decision_id=decision_id,
            policy_revision=policy_revision,
            data_as_of=data_as_of,
            stale=stale,
        )

    def body(self) -> dict[str, Any]:
        """The JSON object, as a dict (for responses that add to it)."""
        return {name: getattr(self, name) for name in self.__slots__}


_DECISION_ADAPTER = TypeAdapter(Decision)
