# Entitlements: may tenant T use feature F, N more times, right now?
#
# Input (built by the sidecar, tiergate/decide.py build_input; times are RFC 3339 UTC, any may be null):
#   {"tenant", "feature", "quantity", "now",
#    "account": null | {"tier", "status", "quantity", "current_period_start", "current_period_end",
#                       "trial_end", "cancel_at_period_end", "past_due_since", "addons": {"<add-on>": qty}},
#    "usage": {"<metric code>": used so far in `period`},
#    "period": {"start", "end"},          # the billing period `usage` belongs to
#    "replica": {"age_seconds"},
#    "overrides": {"<feature>": {"value": true | false | {"limit": N} | {}, "expires_at": null | time}},
#    "license": null | {"id", "issued_at", "not_after", "grace_until", ...},  # a signed offline license
#    "credits": {"tiers": {"<tier>": check}, "override": check,     # only for a credit-priced feature
#                "balances": {"<credit type>": {"balance", "changes_at"}}}}
#      check: {"type", "cost", "sufficient"}, computed exactly by the sidecar (balance available,
#      i.e. less pending local usage and holds, >= cost x quantity); amounts are integers or
#      decimal strings, never to be compared here (the engines' numbers are binary doubles).
# data.plans: the catalog (plans/plans.yaml as Catalog.policy_data() gives it).
#
# Output, the `decision` document:
#   {"allow", "reason", "tier", "paid_tier", "limit", "used", "remaining", "valid_until", "license_grace_until",
#    "credits"}   # credits: {"type", "balance", "cost"} for a credit-priced feature, else null
#   and "used_bound" on a metered allow (the answer holds while the feature's counter stays at or below it),
#   "used_floor" on a deny over the limit (it holds while the counter stays at or above it)
# `tier` is the tier applied; `paid_tier` the one the account pays for (null without an account):
# they differ while a payment is overdue past its grace, a trial has expired, and so on.
# `license_grace_until`: with a signed license past its not-after date and still in grace, when the grace ends.
# Reasons are a fixed vocabulary: ok, not_in_plan, limit_exceeded, subscription_inactive,
# payment_overdue, trial_expired, unknown_feature, replica_stale, license_expired, insufficient_credits.
#
# Portability: this policy runs on the embedded engine (regorus) and on OPA, and must answer the
# same on both (`tiergate policies test --engine opa-reference`). Month arithmetic is done in Python
# (input.period), because time.add_date overflow differs between the engines; see format_instant for
# the other divergence we avoid.
package tiergate.entitlements

import rego.v1

# Fail-closed switch for operators. By default the sidecar is fail-static: it keeps answering from
# its replica however old it is (it reports the age in /v1/status). Set a number of seconds here to
# deny every check with `replica_stale` once the replica is older than that, e.g.
#   max_replica_age_seconds := 900
max_replica_age_seconds := null

# -- the decision --------------------------------------------------------------------------------

decision := stale_decision if {
	replica_stale
} else := license_expired_decision if {
	license_expired
} else := unknown_feature_decision if {
	not known_feature
} else := feature_decision

stale_decision := {
	"allow": false,
	"reason": "replica_stale",
	"tier": effective_tier,
	"paid_tier": paid_tier,
	"limit": null,
	"used": used,
	"remaining": null,
	# Staleness ends when the replica catches up, not at a known time: never cache this answer.
	"valid_until": format_instant(now_ns),
	"license_grace_until": license_grace_until,
	"credits": null,
}

unknown_feature_decision := {
	"allow": false,
	"reason": "unknown_feature",
	"tier": effective_tier,
	"paid_tier": paid_tier,
	"limit": null,
	"used": used,
	"remaining": null,
	"valid_until": valid_until,
	"license_grace_until": license_grace_until,
	"credits": null,
}

# A license past its grace: nothing is allowed until a renewed license is installed, which is
# not a known time (valid_until null: the renewal itself clears the sidecar's answers).
license_expired_decision := {
	"allow": false,
	"reason": "license_expired",
	"tier": effective_tier,
	"limit": null,
	"used": used,
	"remaining": null,
	"valid_until": null,
	"license_grace_until": license.grace_until,
	"credits": null,
}

feature_decision := object.union(credited_answer, {
	"tier": effective_tier,
	"paid_tier": paid_tier,
	"used": used,
	"valid_until": valid_until,
	"license_grace_until": license_grace_until,
	"credits": credits_answer,
})

# -- which rule decided ----------------------------------------------------------------------------

# The rule whose answer the decision is, the tier it read and the add-ons that counted: what
# `tiergate explain` and GET /v1/decisions/{id} name. Evaluated on a recorded input when a person
# asks, never on a check. It follows `decision` and `final_answer` branch by branch; a policy that
# changes those changes this too (policies/entitlements_test.rego holds the two together).
decided_by := {"rule": "replica_stale", "tier": effective_tier, "addons": []} if {
	replica_stale
} else := {"rule": "license_expired", "tier": effective_tier, "addons": []} if {
	license_expired
} else := {"rule": "known_feature", "tier": effective_tier, "addons": []} if {
	not known_feature
} else := {"rule": "override", "tier": effective_tier, "addons": []} if {
	override
} else := {"rule": "restriction", "tier": effective_tier, "addons": []} if {
	final_answer.reason == restriction
} else := {"rule": "credits", "tier": effective_tier, "addons": []} if {
	credited_answer.reason == "insufficient_credits"
} else := {"rule": "metered", "tier": effective_tier, "addons": counted_addons} if {
	final_answer.limit != null
} else := {"rule": "tier_value", "tier": effective_tier, "addons": counted_addons}

# The add-ons that changed the feature's value (only on the tier the subscription grants).
counted_addons := sort([name | some name, _ in addon_effects]) if {
	granted
	feature_value(subscribed_tier) != purchased(tier_value(subscribed_tier))
} else := []

# -- the request ---------------------------------------------------------------------------------

now_ns := time.parse_rfc3339_ns(input.now)

default quantity := 1

quantity := input.quantity if is_number(input.quantity)

default usage_counts := {}

usage_counts := input.usage if is_object(input.usage)

used := object.get(usage_counts, input.feature, 0)

# What a decision reads of input.usage: its own feature's counter (`used` above), nothing else.
# Declaring it lets the sidecar keep a tenant's other answers when usage of one counter changes
# (a reserve, recorded usage); a policy that reads another counter must not declare it (docs/policies.md).
usage_scope := "feature"

# An unknown age (null) is not stale: the sidecar refuses to answer at all without a replica.
replica_stale if {
	max_replica_age_seconds != null
	is_number(input.replica.age_seconds)
	input.replica.age_seconds > max_replica_age_seconds
}

# A feature is known when any tier names it (even as `false`); anything else is a typo or a feature
# the catalog does not have yet, which is a decision (deny), not an error.
known_feature if {
	some tier in data.plans.tiers
	tier.features[input.feature] != null
}

# -- which tier applies --------------------------------------------------------------------------

# The account, when the tenant has one (input.account is null for tenants who never subscribed).
account := input.account if input.account != null

# The tier the tenant pays for, if the catalog still has it. A tier removed from the catalog falls
# back to the default tier rather than failing every check.
subscribed_tier := account.tier if data.plans.tiers[account.tier]

status := account.status if subscribed_tier

# The tier the account pays for as Stripe says, even one the catalog no longer has.
default paid_tier := null

paid_tier := account.tier

# `granted`: the subscribed tier applies right now.
granted if {
	status == "active"
	not account.cancel_at_period_end
}

# Canceled at period end: the tenant paid for this period, so it keeps the tier until it ends.
granted if {
	status == "active"
	account.cancel_at_period_end == true
	not period_end_passed
}

granted if {
	status == "trialing"
	account.trial_end == null # no end date known: trust Stripe's status
}

granted if {
	status == "trialing"
	now_ns < trial_end_ns
}

# past_due keeps the tier for the tier's grace_days while Stripe retries the payment.
granted if {
	status == "past_due"
	account.past_due_since == null # the start of the grace is not known yet: in grace
}

granted if {
	status == "past_due"
	now_ns < grace_end_ns
}

# Every time below is checked for null first: time.parse_rfc3339_ns(null) is an evaluation error
# (on both engines), which would turn the whole decision into a policy error.
period_end_passed if {
	account.current_period_end != null
	now_ns >= time.parse_rfc3339_ns(account.current_period_end)
}

trial_end_ns := time.parse_rfc3339_ns(account.trial_end) if account.trial_end != null

grace_end_ns := time.parse_rfc3339_ns(account.past_due_since) + (grace_days * ns_per_day) if {
	account.past_due_since != null
}

grace_days := object.get(data.plans.tiers[subscribed_tier], "grace_days", 0)

ns_per_day := 86400000000000

# Subscriptions that are over for good put the tenant on the default tier with no restriction: its
# answers are just the default tier's.
ended_statuses := {"canceled", "incomplete_expired"}

# Why a subscribed tier does not apply now (undefined when it applies, or when there is none).
restriction := "trial_expired" if {
	status == "trialing"
	not granted
}

restriction := "payment_overdue" if {
	status == "past_due"
	not granted
}

# active past a cancel-at-period-end, unpaid, paused, incomplete, and any status Stripe adds later.
restriction := "subscription_inactive" if {
	status
	not granted
	not status in ended_statuses
	not status in {"trialing", "past_due"}
}

effective_tier := subscribed_tier if granted
else := data.plans.default_tier

# -- what the tier says about the feature --------------------------------------------------------

# A per-tenant override (support's grant, a sales trial) replaces what any tier says about the
# feature until it expires, whatever the subscription's state: it is a promise to this tenant.
# Change this rule to make overrides yield to, say, payment_overdue.
final_answer := verdict(override.value) if {
	override
} else := object.union(effective_answer, {"reason": restriction}) if {
	restriction
	effective_answer.allow == false
	subscribed_answer := answer(subscribed_tier)
	subscribed_answer.allow == true
} else := effective_answer

# A rule, not a function call, so that it is evaluated once per decision.
effective_answer := answer(effective_tier)

# What `tier` alone says about the requested feature.
answer(tier) := verdict(feature_value(tier))

# The feature's value on a tier: true, false, {limit: N} or {} (unlimited); a tier that does not
# list the feature does not have it. On the tier the subscription grants, its add-ons and its
# purchased quantity (`limit_by: quantity`) count too.
feature_value(tier) := with_addons(purchased(tier_value(tier))) if {
	tier == subscribed_tier
	granted
} else := tier_value(tier)

tier_value(tier) := object.get(data.plans.tiers[tier].features, input.feature, false)

# `limit_by: quantity`: the limit is what the customer bought (seats), capped by `limit` if given.
purchased(value) := {"limit": min([value.limit, account.quantity])} if {
	is_object(value)
	object.get(value, "limit_by", null) == "quantity"
	is_number(object.get(value, "limit", null))
	is_number(account.quantity)
} else := {"limit": account.quantity} if {
	is_object(value)
	object.get(value, "limit_by", null) == "quantity"
	object.get(value, "limit", null) == null
	is_number(account.quantity)
} else := value

# -- add-ons: extra subscription items (catalog `addons:`) ---------------------------------------

default held_addons := {}

held_addons := account.addons if is_object(account.addons)

# What each add-on the subscription holds does to the requested feature: limits it adds, and
# whether one turns the feature on.
addon_effects[name] := effect if {
	some name, qty in held_addons
	qty > 0
	effect := data.plans.addons[name].features[input.feature]
}

addon_additions[name] := held_addons[name] * effect.add_limit if {
	some name, effect in addon_effects
	is_object(effect)
}

addon_bonus := sum([n | n := addon_additions[_]])

addon_on if {
	some effect in addon_effects
	effect == true
}

with_addons(value) := value if {
	count(addon_effects) == 0
} else := {"limit": value.limit + addon_bonus} if {
	is_object(value)
	is_number(object.get(value, "limit", null))
} else := value if {
	value != false # true or unlimited: nothing to add
} else := {"limit": addon_bonus} if {
	addon_bonus > 0
} else := true if {
	addon_on
} else := value

verdict(true) := allowed(null)

verdict(false) := denied("not_in_plan", null, null)

verdict(value) := allowed(null) if {
	is_object(value)
	object.get(value, "limit", null) == null
}

verdict(value) := metered(value.limit) if {
	is_object(value)
	value.limit != null
}

# Metered: `quantity` more must fit in what is left of the limit this period. The answer holds
# while `used` stays at or below `used_bound` (the sidecar keeps it through usage recorded meanwhile,
# with `used` and `remaining` rendered from the live counter; docs/policies.md).
metered(limit) := object.union(allowed(limit), {"used_bound": limit - quantity}) if used + quantity <= limit

# A deny over the limit holds while `used` stays at or above `used_floor` (usage goes down only
# by a correction, which then re-decides).
metered(limit) := object.union(denied("limit_exceeded", limit, remaining(limit)), {"used_floor": max([limit - quantity + 1, 0])}) if {
	used + quantity > limit
}

allowed(limit) := {"allow": true, "reason": "ok", "limit": limit, "remaining": remaining(limit)}

denied(reason, limit, left) := {"allow": false, "reason": reason, "limit": limit, "remaining": left}

# Quota left before this request, never negative (usage can overshoot: it is counted after the fact).
remaining(limit) := null if limit == null

remaining(limit) := max([limit - used, 0]) if limit != null

# -- per-tenant overrides ---------------------------------------------------------------------------

default overrides := {}

overrides := input.overrides if is_object(input.overrides)

# The override of the requested feature, while it has not expired.
override := found if {
	found := overrides[input.feature]
	override_in_force(found)
}

override_in_force(found) if object.get(found, "expires_at", null) == null

override_in_force(found) if {
	found.expires_at != null
	now_ns < time.parse_rfc3339_ns(found.expires_at)
}

# -- credits (docs/credits.md) -------------------------------------------------------------------

# The check of the price that applies: the override's while one is in force (only when it prices
# the feature in credits), else the applied tier's (only when that tier prices it).
credit_check := input.credits.override if {
	override
	is_object(input.credits.override)
} else := input.credits.tiers[effective_tier] if {
	not override
}

# What the plan allows still needs the credits to pay for it; a denial stays the plan's.
credited_answer := object.union(final_answer, {"allow": false, "reason": "insufficient_credits"}) if {
	final_answer.allow == true
	credit_check.sufficient == false
} else := final_answer

default credits_answer := null

credits_answer := {"type": credit_check.type, "balance": credit_balance.balance, "cost": credit_check.cost} if {
	credit_check
}

credit_balance := input.credits.balances[credit_check.type]

# -- signed offline licenses ---------------------------------------------------------------------

# The license the tenant's account comes from (self-hosted installs), with its dates: until
# not_after it is simply the account; from not_after until grace_until its answers still hold and
# carry `license_grace_until`; from grace_until on every check is denied with `license_expired`.
license := input.license if is_object(input.license)

license_expired if {
	license
	now_ns >= time.parse_rfc3339_ns(license.grace_until)
}

license_in_grace if {
	license
	now_ns >= time.parse_rfc3339_ns(license.not_after)
	not license_expired
}

default license_grace_until := null

license_grace_until := license.grace_until if license_in_grace

# -- how long the answer holds -------------------------------------------------------------------

# The earliest future instant at which this answer may change by time alone; the sidecar caches
# decisions until then. null when nothing is scheduled.
default valid_until := null

valid_until := format_instant(min(upcoming_changes)) if count(upcoming_changes) > 0

# Usage counters reset when the billing period ends.
upcoming_changes contains t if {
	input.period.end != null
	t := time.parse_rfc3339_ns(input.period.end)
	t > now_ns
}

upcoming_changes contains trial_end_ns if {
	status == "trialing"
	trial_end_ns > now_ns
}

upcoming_changes contains grace_end_ns if {
	status == "past_due"
	grace_end_ns > now_ns
}

upcoming_changes contains t if {
	status == "active"
	account.cancel_at_period_end == true
	account.current_period_end != null
	t := time.parse_rfc3339_ns(account.current_period_end)
	t > now_ns
}

# The override ends: the tier's answer comes back.
upcoming_changes contains t if {
	override.expires_at != null
	t := time.parse_rfc3339_ns(override.expires_at)
}

# A credit grant takes effect or expires: the balance changes by time alone.
upcoming_changes contains t if {
	credit_balance.changes_at != null
	t := time.parse_rfc3339_ns(credit_balance.changes_at)
	t > now_ns
}

# The license reaches its not-after date (grace begins) or the end of its grace.
upcoming_changes contains t if {
	some moment in [license.not_after, license.grace_until]
	t := time.parse_rfc3339_ns(moment)
	t > now_ns
}

# With the fail-closed switch on, a fresh answer turns into replica_stale once the replica ages
# past the limit: the cache must not outlive that.
upcoming_changes contains t if {
	max_replica_age_seconds != null
	is_number(input.replica.age_seconds)
	# to_number: the constant is typed null by default, which OPA's type checker refuses here.
	left_s := to_number(max_replica_age_seconds) - input.replica.age_seconds
	t := now_ns + floor(left_s * 1000000000)
	t > now_ns
}

# RFC 3339 in UTC, whole seconds. Truncating to the second keeps both engines byte-identical:
# time.format prints fractional seconds as ".500Z" on regorus but ".5Z" on OPA. Rounding down is
# safe for a cache expiry (it expires at most a second early).
format_instant(ns) := time.format(ns - (ns % 1000000000))
