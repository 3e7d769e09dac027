"""The wire contract between the sync daemon and the sidecar: one change-feed entry and its records.

The daemon writes these shapes (`GET /v1/feed/snapshot`, `GET /v1/feed/changes`); the sidecar reads
them. Fields a newer daemon adds are ignored, so daemons can be upgraded before sidecars.
"""

from __future__ import annotations

import math
import os
import socket
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, PrivateAttr

from tiergate.amounts import Amount, Counter, add, negate, policy_units, stored, total
from tiergate.catalog import FeatureValue, Quota
from tiergate.models import Account, TenantId, UsageCounter
from tiergate.periods import rfc3339


class FeedAccount(Account):
    """An account as the feed carries it: fields a newer daemon adds are ignored, so daemons can
    be upgraded before sidecars (documents people write, like imports, stay strict)."""

    model_config = ConfigDict(extra="ignore")


class FeedUsage(UsageCounter):
    """A counter as the feed carries it: `value` in whole units, rounded up and never below zero
    (what decisions compare, and all a sidecar older than exact amounts reads), and `exact`, the
    exact sum (a decimal string, or below zero), when it differs from `value`."""

    model_config = ConfigDict(extra="ignore")

    exact: Counter | None = None
    as_of: AwareDatetime | None = None  # a gauge's: the timestamp of the reading it holds

    def amount(self) -> Amount:
        return self.exact if self.exact is not None else self.value


def usage_record(
    tenant: str, code: str, period_start: str, value: Amount, as_of: str | None = None
) -> dict[str, Any]:
    """The feed's record of one counter (see FeedUsage)."""
    record: dict[str, Any] = {"tenant": tenant, "code": code, "period_start": period_start}
    record["value"] = policy_units(value)
    if value != record["value"]:
        record["exact"] = stored(value)
    if as_of is not None:
        record["as_of"] = as_of
    return record


class FeedOverride(BaseModel):
    """A per-tenant feature override (`PUT /v1/tenants/{tenant}/overrides/{feature}` on the daemon):
    the feature's value for this tenant, whatever its tier says, until `expires_at` (None: until removed)."""

    model_config = ConfigDict(extra="ignore")

    tenant: TenantId
    feature: str
    value: FeatureValue
    expires_at: AwareDatetime | None = None

    def value_document(self) -> bool | dict[str, Any]:
        """The value as the catalog and the policy spell it: true, false, {limit: N} or {}."""
        return value_document(self.value)


def value_document(value: bool | Quota) -> bool | dict[str, Any]:
    return value if isinstance(value, bool) else value.model_dump(exclude_none=True)


class FeedCreditGrant(BaseModel):
    """What is left of one grant, and when it counts: from `effective_at` until `expires_at`."""

    model_config = ConfigDict(extra="ignore")

    remaining: Counter
    effective_at: AwareDatetime
    expires_at: AwareDatetime | None = None


class FeedCredits(BaseModel):
    """A tenant's state of one credit type (docs/credits.md): its unspent grants with their times,
    so a follower knows the balance at any moment until the next change, and a debt (usage beyond
    the balance) the next grant repays."""

    model_config = ConfigDict(extra="ignore")

    tenant: TenantId
    credit_type: str
    debt: Counter = 0
    grants: list[FeedCreditGrant] = []
    # (from, until, balance, its text, `until` as RFC 3339): the balance holds until the next change
    _memo: tuple[datetime, datetime | None, Amount, int | str, str | None] | None = PrivateAttr(default=None)

    def at(self, now: datetime) -> tuple[Amount, int | str, str | None]:
        """(balance, its JSON form, the next change as RFC 3339) at `now`, computed once for every
        moment until the next grant takes effect or expires (the decision path asks per check)."""
        private = self.__pydantic_private__  # the memo, without pydantic's attribute lookup per check
        memo = private.get("_memo") if private is not None else None
        if memo is None or now < memo[0] or (memo[1] is not None and now >= memo[1]):
            balance, until = self.balance(now), self.next_change(now)
            memo = self._memo = (now, until, balance, stored(balance), rfc3339(until))
        return memo[2], memo[3], memo[4]

    def balance(self, now: datetime) -> Amount:
        spendable = [
            g.remaining
            for g in self.grants
            if g.effective_at <= now and (g.expires_at is None or now < g.expires_at)
        ]
        return add(total(spendable), negate(self.debt))

    def next_change(self, now: datetime) -> datetime | None:
        """The next moment the balance changes by time alone: a grant takes effect or expires."""
        moments = [
            moment
            for g in self.grants
            for moment in (g.effective_at, g.expires_at)
            if moment is not None and moment > now
        ]
        return min(moments) if moments else None

    def next_expiry(self, now: datetime) -> datetime | None:
        ends = [
            g.expires_at
            for g in self.grants
            if g.expires_at is not None and g.effective_at <= now < g.expires_at
        ]
        return min(ends) if ends else None


# The kinds this version applies. A newer daemon may send others: a sidecar skips them (and
# still advances its position), so daemons can be upgraded before sidecars.
KNOWN_KINDS = frozenset({"account", "usage", "override", "credits"})


class FeedChange(BaseModel):
    """One entry of the daemon's change feed (`GET /v1/feed/changes`).

    `override` entries are keyed by (tenant, `feature`): an upsert carries the override, a delete
    only names it. `credits` entries are keyed by (tenant, credit type): an upsert replaces the
    type's state.
    """

    model_config = ConfigDict(extra="ignore")

    seq: int
    kind: str
    op: Literal["upsert", "delete"] = "upsert"
    tenant: str
    account: FeedAccount | None = None
    usage: FeedUsage | None = None
    override: FeedOverride | None = None
    credits: FeedCredits | None = None
    feature: str | None = None


# How far the daemon's own mirror may be behind Stripe (seconds, a duration: no clock enters into
# it), in the snapshot's header line and in every /v1/feed/changes answer. A daemon from before
# the field sends none: read as 0.
MIRROR_LAG_FIELD = "mirror_lag_s"


def reported_lag(document: Any) -> float:
    """The daemon's `mirror_lag_s` in a feed document; 0 when absent or not a finite number >= 0."""
    value = document.get(MIRROR_LAG_FIELD) if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


def refused_token(status: int, path: str, *, token_sent: bool) -> str | None:
    """What to tell the operator when the daemon refuses the sidecar's bearer token (401/403):
    it is a configuration error, not an outage, and retrying will not fix it."""
    if status not in (401, 403):
        return None
    if not token_sent:
        return (
            f"authentication failed: the daemon answered {status} to {path} and this sidecar sends no "
            "token; set TIERGATE_FEED_TOKEN to the daemon's TIERGATE_FEED_TOKEN"
        )
    return (
        f"authentication failed: the daemon answered {status} to {path}: it does not accept this "
        "sidecar's TIERGATE_FEED_TOKEN; set it to one of the daemon's TIERGATE_FEED_TOKEN"
    )


# Who follows: a sidecar names itself (its host, i.e. the pod, and process) on every feed request,
# so the daemon's console can list the fleet with each follower's position and last contact.
FOLLOWER_HEADER = "X-Tiergate-Follower"


def follower_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:200]
