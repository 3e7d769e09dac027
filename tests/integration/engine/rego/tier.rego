# A tier policy shaped like policies/entitlements.rego (DESIGN.md "Policies"), for engine tests only.
package tiergate.entitlements

default decision := {
	"allow": false, "reason": "unknown_feature", "tier": null,
	"limit": null, "used": 0, "remaining": null, "valid_until": null,
}

decision := {
	"allow": reason == "ok",
	"reason": reason,
	"tier": tier_name,
	"limit": limit,
	"used": used,
	"remaining": remaining,
	"valid_until": valid_until,
}

tier_name := object.get(input.account, "tier", data.plans.default_tier)

tier := data.plans.tiers[tier_name]

used := object.get(input.usage, input.feature, 0)

known if {
	some name
	_ = data.plans.tiers[name].features[input.feature]
}

in_plan if tier.features[input.feature] != false

default limit := null

limit := tier.features[input.feature].limit

default remaining := null

remaining := max([0, limit - used]) if limit != null

default valid_until := null

valid_until := input.account.current_period_end if input.account.current_period_end

now_ns := time.parse_rfc3339_ns(input.now)

trial_over if {
	input.account.status == "trialing"
	time.parse_rfc3339_ns(input.account.trial_end) < now_ns
}

in_grace if {
	input.account.status == "past_due"
	now_ns - time.parse_rfc3339_ns(input.account.past_due_since) < ((tier.grace_days * 24) * 3600) * 1000000000
}

over_limit if {
	limit != null
	used + input.quantity > limit
}

reason := "unknown_feature" if {
	not known
} else := "replica_stale" if {
	input.replica.age_seconds > 300
} else := "trial_expired" if {
	trial_over
} else := "payment_overdue" if {
	input.account.status == "past_due"
	not in_grace
} else := "subscription_inactive" if {
	not input.account.status in {"active", "trialing", "past_due"}
} else := "not_in_plan" if {
	not in_plan
} else := "limit_exceeded" if {
	over_limit
} else := "ok"
