"""The policy's input document and its answer, pure: shared by the sidecar and the daemon's lookups."""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from tiergate.amounts import Amount, policy_units
from tiergate.models import PolicyAnswer
from tiergate.periods import rfc3339

# What the policy reads of an account (input.account, docs/policies.md), in order: the one list of it.
POLICY_ACCOUNT_FIELDS = tuple(
    [
        "tier",
        "status",
        "quantity",
        "current_period_start",
        "current_period_end",
        "trial_end",
        "cancel_at_period_end",
        "past_due_since",
        "addons",
    ]
)
_FROM_ITEMS = operator.itemgetter(*POLICY_ACCOUNT_FIELDS)
_FROM_ATTRIBUTES = operator.attrgetter(*POLICY_ACCOUNT_FIELDS)


def policy_account(account: Mapping[str, Any] | NamedTuple | None) -> dict[str, Any] | None:
    """input.account from an account as it is stored: the feed's Account document (a dict: the
    mirror's, a license's) or a replica row (a NamedTuple of the same names). Times stay the
    RFC 3339 text they are stored as; the flag becomes a boolean (a row's 0/1); add-ons a mapping
    (a row's JSON text, or NULL for none)."""
    if account is None:
        return None
    values = _FROM_ITEMS(account) if isinstance(account, dict) else _FROM_ATTRIBUTES(account)
    tier, status, quantity, start, end, trial_end, cancel, past_due_since, addons = values
    return {  # POLICY_ACCOUNT_FIELDS, in order (a unit test holds the two together)
        "tier": tier,
        "status": status,
        "quantity": quantity,
        "current_period_start": start,
        "current_period_end": end,
        "trial_end": trial_end,
        "cancel_at_period_end": bool(cancel),
        "past_due_since": past_due_since,
        "addons": json.loads(addons) if isinstance(addons, str) else dict(addons or {}),
    }


def build_input(
    *,
    tenant: str,
    feature: str,
    quantity: int,
    now_text: str,
    account: dict[str, Any] | None,
    usage: Mapping[str, Amount],
    period: tuple[str, str],
    replica_age_s: float | None,
    overrides: Mapping[str, Any] | None = None,
    license: Mapping[str, Any] | None = None,
    credits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The input document of policies/entitlements.rego (see docs/policies.md)."""
    document = {
        "tenant": tenant,
        "feature": feature,
        "quantity": quantity,
        "now": now_text,
        "account": account,
        # Whole units, never below zero (a correction may run ahead of the usage it corrects), a
        # fraction rounded up: exact against whole limits and quantities (tiergate/amounts.py).
        "usage": {code: policy_units(value) for code, value in usage.items()},
        "period": {"start": period[0], "end": period[1]},
        "replica": {"age_seconds": replica_age_s},
        # The tenant's overrides, expired ones included: the policy says what applies (expires_at).
        "overrides": overrides or {},
        # The signed license the tenant's account comes from: its dates (null: no license).
        "license": license,
    }
    if credits is not None:  # a credit-priced feature: the exact checks (docs/credits.md)
        document["credits"] = credits
    return document


_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _credits_or_none(value: object) -> dict[str, Any] | None:
    """The answer's `credits` ({type, balance, cost}), as the policy gave it; None otherwise."""
    if not isinstance(value, dict) or len(value) != 3:
        return None
    kind, balance, cost = value.get("type"), value.get("balance"), value.get("cost")
    if type(kind) is not str or type(balance) not in (int, str) or type(cost) not in (int, str):
        return None  # (type(): a bool is not an amount)
    return value


class PolicyAnswerError(ValueError):
    """The policy returned something that is not a decision document."""


def parse_answer(answer: object) -> PolicyAnswer:
    """Check the policy's `decision` document and normalise it; raises PolicyAnswerError."""
    if not isinstance(answer, dict):
        raise PolicyAnswerError(f"decision must be an object, got {type(answer).__name__}")
    allow = answer.get("allow")
    reason = answer.get("reason")
    if not isinstance(allow, bool):
        raise PolicyAnswerError(f"decision.allow must be a boolean, got {allow!r}")
    if not isinstance(reason, str) or not reason:
        raise PolicyAnswerError(f"decision.reason must be a non-empty string, got {reason!r}")
    limit = answer.get("limit")
    remaining = answer.get("remaining")
    used = answer.get("used", 0)
    tier = answer.get("tier")
    paid_tier = answer.get("paid_tier")
    return PolicyAnswer(
        allow=allow,
        reason=reason,
        tier=tier if isinstance(tier, str) else None,
        limit=limit if isinstance(limit, int) else None,
        used=used if isinstance(used, int) else 0,
        remaining=remaining if isinstance(remaining, int) else None,
        valid_until=_time_or_none(answer.get("valid_until")),
        paid_tier=paid_tier if isinstance(paid_tier, str) else None,
        license_grace_until=_time_or_none(answer.get("license_grace_until")),
        credits=_credits_or_none(answer.get("credits")),
    )


USED_CEILING = 2**63 - 1  # no `used_bound`: no ceiling (kept in a signed 64-bit field)


def used_range(answer: object) -> tuple[int, int] | None:
    """(`used_floor`, `used_bound`) of a decision: its answer holds while the feature's own counter
    stays within them; a side not given is open (0, USED_CEILING). None when the policy gives
    neither, or one that is not a whole number in 0..USED_CEILING (docs/policies.md)."""
    if not isinstance(answer, dict) or ("used_floor" not in answer and "used_bound" not in answer):
        return None
    floor, ceiling = answer.get("used_floor", 0), answer.get("used_bound", USED_CEILING)
    if not (_whole(floor) and _whole(ceiling)) or floor > ceiling:
        return None
    return floor, ceiling


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= USED_CEILING


def _time_or_none(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    # The shipped policy already writes the canonical form: re-formatting it would cost ~5 µs.
    return value if _CANONICAL.fullmatch(value) else rfc3339(moment)


def policy_error_decision(tier: str | None) -> PolicyAnswer:
    """What callers get when the policy cannot answer: a deny, never an error (`tier`: the paid one)."""
    return PolicyAnswer(allow=False, reason="policy_error", tier=tier, paid_tier=tier)


def feature_sources(
    overrides: Mapping[str, Mapping[str, Any]],
    addons: Mapping[str, int],
    addon_features: Mapping[str, set[str]],
    now_text: str,
) -> dict[str, str]:
    """Where each feature's value comes from when not from the plan: an add-on the subscription
    holds, or an override in force (which wins). `now_text` is RFC 3339 `Z` of whole seconds, so
    it compares in time order with the overrides' `expires_at`, as the policy's instants do."""
    held = [name for name, quantity in addons.items() if quantity > 0]
    sources = {feature: "addon" for name in held for feature in addon_features.get(name, ())}
    for feature, found in overrides.items():
        if found.get("expires_at") is None or now_text < str(found["expires_at"]):
            sources[feature] = "override"
    return sources


# What each rule of the shipped policy's `decided_by` means, for a person (policies/entitlements.rego).
RULES = {
    "replica_stale": "the replica was older than the policy's max_replica_age_seconds",
    "license_expired": "the signed license's grace period had ended",
    "known_feature": "no tier of the catalog names {feature}",
    "override": "the tenant's override of {feature} (an override wins over every tier)",
    "restriction": "the account is {status}: the {tier} tier applied instead of the paid {paid} tier, "
    "which would have allowed {feature}",
    "credits": "the balance of credits the {tier} tier's price of {feature} draws on",
    "metered": "the {tier} tier's limit on {feature} this period",
    "tier_value": "what the {tier} tier says of {feature}",
}


def explain_rule(found: object, decision: Mapping[str, Any], document: Mapping[str, Any]) -> dict[str, Any]:
    """`decided_by`'s answer for a recorded decision, with a sentence for a person. A policy that
    has no `decided_by` (None) or answers something else is said so, never guessed at."""
    if not isinstance(found, dict) or not isinstance(found.get("rule"), str):
        shown = "no decided_by rule" if found is None else f"decided_by gave {type(found).__name__}"
        return {"rule": None, "text": f"the policy does not say which rule decided ({shown})"}
    rule, tier = found["rule"], found.get("tier")
    addons = [str(name) for name in found.get("addons") or [] if isinstance(name, str)]
    account = document.get("account") or {}
    text = RULES.get(rule, f"the policy's rule {rule}").format(
        feature=decision.get("feature"),
        tier=tier,
        status=account.get("status"),
        paid=decision.get("paid_tier") or account.get("tier"),
    )
    if addons:
        text += f", with the add-on{'s' if len(addons) > 1 else ''} {', '.join(addons)}"
    return {"rule": rule, "tier": tier if isinstance(tier, str) else None, "addons": addons, "text": text}
