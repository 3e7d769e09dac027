# Unit tests for entitlements.rego: `tiergate policies test policies` (add --engine opa-reference to
# check OPA agrees). They use the small catalog below, not plans/plans.yaml, so editing the real
# catalog never breaks them.
package tiergate.entitlements_test

import rego.v1

import data.tiergate.entitlements

# -- fixtures ------------------------------------------------------------------------------------

fixture_plans := {
	"default_tier": "free",
	"metrics": {"api_calls": {"aggregation": "count"}},
	"tiers": {
		"free": {"rank": 0, "features": {
			"api_calls": {"limit": 100},
			"dashboards": true,
			"reports": false,
		}},
		"pro": {"rank": 10, "trial_days": 14, "grace_days": 7, "features": {
			"api_calls": {"limit": 1000},
			"dashboards": true,
			"reports": true,
			"exports": {},
		}},
		"enterprise": {"rank": 20, "grace_days": 14, "features": {
			"api_calls": {},
			"dashboards": true,
			"reports": true,
			"exports": {},
			"sso": true,
		}},
	},
	"routes": [],
	"ingress": {"unmatched": "allow"},
}

now := "2026-11-24T10:00:00Z"

period_end := "2026-12-01T00:00:00Z"

# An input for `feature` with no account, nothing used yet.
request(feature) := {
	"tenant": "t_1",
	"feature": feature,
	"quantity": 1,
	"now": now,
	"account": null,
	"usage": {},
	"period": {"start": "2026-11-01T00:00:00Z", "end": period_end},
	"replica": {"age_seconds": 0.4},
}

# A request with extra or replaced top-level fields.
request_with(feature, fields) := object.union(request(feature), fields)

# A request from a tenant whose subscription is `tier`/`status`, with account fields in `extra`.
subscribed(feature, tier, status, extra) := request_with(feature, {"account": object.union(
	{
		"tier": tier,
		"status": status,
		"quantity": 1,
		"current_period_start": "2026-11-01T00:00:00Z",
		"current_period_end": period_end,
		"trial_end": null,
		"cancel_at_period_end": false,
		"past_due_since": null,
	},
	extra,
)})

decide(doc) := d if {
	d := entitlements.decision with input as doc with data.plans as fixture_plans
}

# -- tenants without a subscription --------------------------------------------------------------

test_no_account_gets_default_tier if {
	d := decide(request("dashboards"))
	d.allow == true
	d.reason == "ok"
	d.tier == "free"
}

test_decision_is_the_full_document if {
	decide(request_with("api_calls", {"usage": {"api_calls": 10}})) == {
		"allow": true,
		"reason": "ok",
		"tier": "free",
		"paid_tier": null,
		"limit": 100,
		"used": 10,
		"remaining": 90,
		"valid_until": period_end,
		"license_grace_until": null,
		"credits": null,
		"used_bound": 99,
	}
}

# A denial names both tiers: the one applied and the one paid for.
test_overdue_past_grace_names_the_paid_tier if {
	d := decide(subscribed("reports", "pro", "past_due", {"past_due_since": "2026-10-01T00:00:00Z"}))
	d.allow == false
	d.reason == "payment_overdue"
	d.tier == "free"
	d.paid_tier == "pro"
}

test_paid_tier_is_named_even_when_the_catalog_dropped_it if {
	d := decide(subscribed("dashboards", "retired_tier", "active", {}))
	d.tier == "free"
	d.paid_tier == "retired_tier"
}

test_active_subscription_pays_for_the_tier_it_gets if {
	d := decide(subscribed("sso", "pro", "active", {}))
	d.tier == "pro"
	d.paid_tier == "pro"
}

# usage_scope := "feature" is a promise: no decision reads a counter other than its own feature's.
test_decisions_read_only_their_own_counter if {
	others := {"api_calls": 100, "reports": 7, "exports": 3, "dashboards": 1, "sso": 2}
	every feature in ["api_calls", "reports", "exports", "dashboards", "sso", "made_up"] {
		every tier in ["pro", "enterprise"] {
			own := {feature: object.get(others, feature, 0)}
			alone := subscribed(feature, tier, "active", {})
			decide(object.union(alone, {"usage": own})) == decide(object.union(alone, {"usage": others}))
		}
	}
	entitlements.usage_scope == "feature"
}

test_feature_false_is_not_in_plan if {
	d := decide(request("reports"))
	d.allow == false
	d.reason == "not_in_plan"
}

test_feature_absent_from_tier_is_not_in_plan if {
	d := decide(subscribed("sso", "pro", "active", {}))
	d.allow == false
	d.reason == "not_in_plan"
	d.tier == "pro"
}

test_unknown_feature_is_a_deny_not_an_error if {
	d := decide(request("teleport"))
	d.allow == false
	d.reason == "unknown_feature"
	d.limit == null
}

test_unknown_feature_while_restricted if {
	d := decide(subscribed("teleport", "pro", "unpaid", {}))
	d.reason == "unknown_feature"
}

# -- metered features ----------------------------------------------------------------------------

test_usage_absent_counts_as_zero if {
	d := decide(request("api_calls"))
	d.allow == true
	d.used == 0
	d.remaining == 100
}

test_metered_up_to_the_limit_is_allowed if {
	d := decide(request_with("api_calls", {"usage": {"api_calls": 99}}))
	d.allow == true
	d.reason == "ok"
	d.remaining == 1
}

# used_bound: the allow holds while used stays at or below it, and is a deny just past it.
test_a_metered_allow_holds_up_to_its_used_bound if {
	d := decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": 40}}))
	d.used_bound == 95
	every used in [0, 40, 94, 95] {
		same := decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": used}}))
		[same.allow, same.reason, same.limit, same.used_bound] == [true, "ok", 100, 95]
		same.remaining == 100 - used
	}
	decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": 96}})).allow == false
}

test_only_a_metered_allow_has_a_used_bound if {
	not decide(request_with("api_calls", {"usage": {"api_calls": 100}})).used_bound
	not decide(request("dashboards")).used_bound
	not decide(request("reports")).used_bound
	not decide(subscribed("api_calls", "enterprise", "active", {})).used_bound
}

# used_floor: the deny over the limit holds while used stays at or above it, and is an allow just below.
test_a_deny_over_the_limit_holds_down_to_its_used_floor if {
	d := decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": 120}}))
	d.used_floor == 96
	every used in [96, 100, 120, 5000] {
		same := decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": used}}))
		[same.allow, same.reason, same.limit, same.used_floor] == [false, "limit_exceeded", 100, 96]
		same.remaining == max([100 - used, 0])
	}
	decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": 95}})).allow == true
}

test_a_quantity_over_the_whole_limit_has_a_floor_of_zero if {
	decide(request_with("api_calls", {"quantity": 500})).used_floor == 0
}

test_only_a_deny_over_the_limit_has_a_used_floor if {
	not decide(request_with("api_calls", {"usage": {"api_calls": 40}})).used_floor
	not decide(request("reports")).used_floor
	not decide(request("teleport")).used_floor
}

test_metered_at_the_limit_is_exceeded if {
	d := decide(request_with("api_calls", {"usage": {"api_calls": 100}}))
	d.allow == false
	d.reason == "limit_exceeded"
	d.limit == 100
	d.used == 100
	d.remaining == 0
}

test_quantity_that_fits_is_allowed if {
	d := decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": 95}}))
	d.allow == true
	d.remaining == 5
}

test_quantity_that_does_not_fit_is_denied if {
	d := decide(request_with("api_calls", {"quantity": 5, "usage": {"api_calls": 96}}))
	d.allow == false
	d.reason == "limit_exceeded"
	d.remaining == 4 # what is left before this request, even though the request does not fit
}

test_overshoot_leaves_zero_remaining if {
	d := decide(request_with("api_calls", {"usage": {"api_calls": 150}}))
	d.remaining == 0
	d.used == 150
}

test_unlimited_feature if {
	d := decide(object.union(
		subscribed("api_calls", "enterprise", "active", {}),
		{"usage": {"api_calls": 1000000000}},
	))
	d.allow == true
	d.reason == "ok"
	d.limit == null
	d.remaining == null
	d.used == 1000000000
}

test_unlimited_feature_on_a_paid_tier if {
	d := decide(subscribed("exports", "pro", "active", {}))
	d.allow == true
	d.limit == null
}

# -- subscription statuses -----------------------------------------------------------------------

test_active_gets_the_subscribed_tier if {
	d := decide(subscribed("reports", "pro", "active", {}))
	d.allow == true
	d.tier == "pro"
}

test_active_uses_the_subscribed_limit if {
	d := decide(object.union(subscribed("api_calls", "pro", "active", {}), {"usage": {"api_calls": 500}}))
	d.allow == true
	d.limit == 1000
	d.remaining == 500
}

test_unknown_tier_falls_back_to_the_default_tier if {
	d := decide(subscribed("reports", "platinum", "active", {}))
	d.tier == "free"
	d.reason == "not_in_plan"
}

test_canceled_is_the_default_tier_without_restriction if {
	d := decide(subscribed("reports", "pro", "canceled", {}))
	d.tier == "free"
	d.reason == "not_in_plan"
}

test_incomplete_expired_is_the_default_tier_without_restriction if {
	d := decide(subscribed("reports", "pro", "incomplete_expired", {}))
	d.tier == "free"
	d.reason == "not_in_plan"
}

test_unpaid_is_inactive if {
	d := decide(subscribed("reports", "pro", "unpaid", {}))
	d.allow == false
	d.reason == "subscription_inactive"
	d.tier == "free"
}

test_paused_is_inactive if {
	d := decide(subscribed("reports", "pro", "paused", {}))
	d.allow == false
	d.reason == "subscription_inactive"
}

test_incomplete_is_inactive if {
	d := decide(subscribed("reports", "pro", "incomplete", {}))
	d.allow == false
	d.reason == "subscription_inactive"
}

test_inactive_keeps_what_the_default_tier_allows if {
	d := decide(subscribed("dashboards", "pro", "unpaid", {}))
	d.allow == true
	d.reason == "ok"
	d.tier == "free"
}

# -- trials --------------------------------------------------------------------------------------

test_trialing_before_trial_end_gets_the_tier if {
	d := decide(subscribed("reports", "pro", "trialing", {"trial_end": "2026-11-30T12:00:00Z"}))
	d.allow == true
	d.tier == "pro"
	d.valid_until == "2026-11-30T12:00:00Z"
}

test_trialing_without_trial_end_is_like_active if {
	d := decide(subscribed("reports", "pro", "trialing", {}))
	d.allow == true
	d.tier == "pro"
	d.valid_until == period_end
}

test_trial_expired_paid_feature if {
	d := decide(subscribed("reports", "pro", "trialing", {"trial_end": "2026-11-20T00:00:00Z"}))
	d.allow == false
	d.reason == "trial_expired"
	d.tier == "free"
}

test_trial_expired_keeps_free_features if {
	d := decide(subscribed("dashboards", "pro", "trialing", {"trial_end": "2026-11-20T00:00:00Z"}))
	d.allow == true
	d.reason == "ok"
}

test_trial_expired_over_the_free_limit if {
	doc := object.union(
		subscribed("api_calls", "pro", "trialing", {"trial_end": "2026-11-20T00:00:00Z"}),
		{"usage": {"api_calls": 500}},
	)
	d := decide(doc)
	d.allow == false
	d.reason == "trial_expired" # the paid tier would allow 500 + 1 of 1000
	d.limit == 100
	d.remaining == 0
}

test_trial_ends_exactly_now if {
	d := decide(subscribed("reports", "pro", "trialing", {"trial_end": now}))
	d.reason == "trial_expired"
}

# -- cancel at period end ------------------------------------------------------------------------

test_cancel_at_period_end_keeps_the_tier_until_then if {
	doc := object.union(
		subscribed("reports", "pro", "active", {
			"cancel_at_period_end": true,
			"current_period_end": "2026-11-28T00:00:00Z",
		}),
		{"period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}},
	)
	d := decide(doc)
	d.allow == true
	d.tier == "pro"
	d.valid_until == "2026-11-28T00:00:00Z"
}

test_cancel_at_period_end_after_the_end_is_inactive if {
	d := decide(subscribed("reports", "pro", "active", {
		"cancel_at_period_end": true,
		"current_period_end": "2026-11-20T00:00:00Z",
	}))
	d.allow == false
	d.reason == "subscription_inactive"
	d.tier == "free"
}

test_cancel_at_period_end_after_the_end_keeps_free_features if {
	d := decide(subscribed("dashboards", "pro", "active", {
		"cancel_at_period_end": true,
		"current_period_end": "2026-11-20T00:00:00Z",
	}))
	d.allow == true
	d.tier == "free"
}

test_cancel_at_period_end_without_a_period_end_keeps_the_tier if {
	d := decide(subscribed("reports", "pro", "active", {
		"cancel_at_period_end": true,
		"current_period_end": null,
	}))
	d.allow == true
	d.tier == "pro"
}

# -- past due and grace --------------------------------------------------------------------------

test_past_due_in_grace_keeps_the_tier if {
	d := decide(subscribed("reports", "pro", "past_due", {"past_due_since": "2026-11-20T00:00:00Z"}))
	d.allow == true
	d.tier == "pro"
	d.valid_until == "2026-11-27T00:00:00Z" # pro has 7 grace days
}

test_past_due_without_a_start_is_in_grace if {
	d := decide(subscribed("reports", "pro", "past_due", {}))
	d.allow == true
	d.tier == "pro"
}

test_past_due_after_grace_is_payment_overdue if {
	d := decide(subscribed("reports", "pro", "past_due", {"past_due_since": "2026-11-10T00:00:00Z"}))
	d.allow == false
	d.reason == "payment_overdue"
	d.tier == "free"
}

test_past_due_grace_ends_exactly_now if {
	d := decide(subscribed("reports", "pro", "past_due", {"past_due_since": "2026-11-17T10:00:00Z"}))
	d.reason == "payment_overdue"
}

test_past_due_after_grace_keeps_free_features if {
	d := decide(subscribed("dashboards", "pro", "past_due", {"past_due_since": "2026-11-10T00:00:00Z"}))
	d.allow == true
	d.reason == "ok"
}

test_past_due_after_grace_feature_in_neither_tier if {
	d := decide(subscribed("sso", "pro", "past_due", {"past_due_since": "2026-11-10T00:00:00Z"}))
	d.reason == "not_in_plan"
}

test_grace_days_come_from_the_subscribed_tier if {
	# 12 days past due: beyond pro's 7 grace days, within enterprise's 14
	d := decide(subscribed("sso", "enterprise", "past_due", {"past_due_since": "2026-11-12T10:00:00Z"}))
	d.allow == true
	d.tier == "enterprise"
	d.valid_until == "2026-11-26T10:00:00Z"
}

# -- valid_until ---------------------------------------------------------------------------------

test_valid_until_is_the_period_end if {
	decide(request("dashboards")).valid_until == period_end
}

test_valid_until_is_null_without_anything_scheduled if {
	d := decide(request_with("dashboards", {"period": {"start": null, "end": null}}))
	d.valid_until == null
}

test_valid_until_ignores_past_instants if {
	d := decide(request_with("dashboards", {"period": {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}}))
	d.valid_until == null
}

test_valid_until_is_whole_seconds if {
	d := decide(request_with("dashboards", {"period": {"start": null, "end": "2026-12-01T00:00:00.500Z"}}))
	d.valid_until == "2026-12-01T00:00:00Z"
}

# -- replica staleness ---------------------------------------------------------------------------

test_stale_replica_is_ignored_by_default if {
	d := decide(request_with("dashboards", {"replica": {"age_seconds": 86400}}))
	d.allow == true
}

test_stale_replica_denies_when_configured if {
	d := entitlements.decision with input as request_with("dashboards", {"replica": {"age_seconds": 120}})
		with data.plans as fixture_plans
		with data.tiergate.entitlements.max_replica_age_seconds as 60
	d.allow == false
	d.reason == "replica_stale"
}

test_fresh_replica_allowed_when_configured if {
	d := entitlements.decision with input as request_with("dashboards", {"replica": {"age_seconds": 10}})
		with data.plans as fixture_plans
		with data.tiergate.entitlements.max_replica_age_seconds as 60
	d.allow == true
}

# The cache must not keep a fresh answer past the moment the replica becomes too old.
test_fresh_answer_is_valid_until_the_replica_would_be_too_old if {
	d := entitlements.decision with input as request_with("dashboards", {"replica": {"age_seconds": 10}})
		with data.plans as fixture_plans
		with data.tiergate.entitlements.max_replica_age_seconds as 60
	d.valid_until == time.format(time.parse_rfc3339_ns(request_with("dashboards", {}).now) + (50 * 1000000000))
}

test_unknown_replica_age_is_not_stale if {
	d := entitlements.decision with input as request_with("dashboards", {"replica": {"age_seconds": null}})
		with data.plans as fixture_plans
		with data.tiergate.entitlements.max_replica_age_seconds as 60
	d.allow == true
}

# -- per-tenant overrides ------------------------------------------------------------------------

with_override(doc, feature, value, expires_at) := object.union(doc, {"overrides": {feature: {
	"value": value,
	"expires_at": expires_at,
}}})

test_an_override_grants_a_feature_the_tier_lacks_until_it_expires if {
	trial := "2026-12-08T00:00:00Z"
	d := decide(with_override(request("reports"), "reports", true, trial))
	d.allow == true
	d.reason == "ok"
	d.tier == "free"
	d.valid_until == period_end # the period ends first

	expired := decide(with_override(request("reports"), "reports", true, "2026-11-24T09:59:59Z"))
	expired.allow == false
	expired.reason == "not_in_plan"
}

test_valid_until_is_the_override_expiry_when_it_comes_first if {
	d := decide(with_override(request("reports"), "reports", true, "2026-11-24T12:00:00Z"))
	d.allow == true
	d.valid_until == "2026-11-24T12:00:00Z"
}

test_an_override_limit_replaces_the_tier_limit if {
	doc := object.union(subscribed("api_calls", "pro", "active", {}), {"usage": {"api_calls": 1000}})
	decide(doc).reason == "limit_exceeded"
	d := decide(with_override(doc, "api_calls", {"limit": 5000000}, null))
	d.allow == true
	d.limit == 5000000
	d.remaining == 4999000
	d.valid_until == period_end
}

test_an_override_can_take_a_feature_away_and_unlimit_one if {
	off := decide(with_override(subscribed("dashboards", "pro", "active", {}), "dashboards", false, null))
	off.allow == false
	off.reason == "not_in_plan"
	unlimited := decide(with_override(request("api_calls"), "api_calls", {}, null))
	unlimited.allow == true
	unlimited.limit == null
}

test_an_override_holds_through_a_restricted_subscription if {
	doc := subscribed("exports", "pro", "past_due", {"past_due_since": "2026-11-01T00:00:00Z"})
	decide(doc).reason == "payment_overdue"
	decide(with_override(doc, "exports", true, null)).allow == true
}

test_an_override_of_another_feature_changes_nothing if {
	d := decide(with_override(request("reports"), "sso", true, null))
	d.allow == false
	d.reason == "not_in_plan"
}

test_missing_or_malformed_overrides_are_ignored if {
	decide(request_with("reports", {"overrides": null})).reason == "not_in_plan"
	decide(request_with("reports", {"overrides": []})).reason == "not_in_plan"
}

# -- add-ons and seats ---------------------------------------------------------------------------

selling_plans := object.union(fixture_plans, {
	"tiers": object.union(fixture_plans.tiers, {
		"free": object.union(fixture_plans.tiers.free, {"features": object.union(
			fixture_plans.tiers.free.features,
			{"seats": {"limit": 3}, "storage_gb": {"limit": 1}},
		)}),
		"pro": object.union(fixture_plans.tiers.pro, {"features": object.union(
			fixture_plans.tiers.pro.features,
			{"seats": {"limit": 25, "limit_by": "quantity"}, "storage_gb": {"limit": 100}, "sso": false},
		)}),
		"enterprise": object.union(fixture_plans.tiers.enterprise, {"features": object.union(
			fixture_plans.tiers.enterprise.features,
			{"seats": {"limit_by": "quantity"}, "storage_gb": {}},
		)}),
	}),
	"addons": {
		"extra_storage": {"prices": {}, "features": {"storage_gb": {"add_limit": 100}}},
		"sso_pack": {"prices": {}, "features": {"sso": true}},
		"reports_credits": {"prices": {}, "features": {"reports": {"add_limit": 10}}},
	},
})

sell(doc) := d if {
	d := entitlements.decision with input as doc with data.plans as selling_plans
}

with_usage(doc, usage) := object.union(doc, {"usage": usage})

test_an_addon_raises_a_limit_by_its_quantity if {
	doc := subscribed("storage_gb", "pro", "active", {"addons": {"extra_storage": 2}})
	d := sell(with_usage(doc, {"storage_gb": 250}))
	d.allow == true
	d.limit == 300
	d.remaining == 50
	sell(with_usage(subscribed("storage_gb", "pro", "active", {}), {"storage_gb": 250})).reason == "limit_exceeded"
}

test_an_addon_turns_a_feature_on_or_gives_a_limit_the_tier_lacks if {
	sell(subscribed("sso", "pro", "active", {"addons": {"sso_pack": 1}})).allow == true
	sell(subscribed("sso", "pro", "active", {})).reason == "not_in_plan"
	# free denies reports; on pro-with-credits the tier already allows it: unlimited stays unlimited
	d := sell(subscribed("reports", "pro", "active", {"addons": {"reports_credits": 3}}))
	d.allow == true
	d.limit == null
}

test_an_addon_does_nothing_when_the_tier_is_not_granted_or_its_quantity_is_zero if {
	overdue := {"past_due_since": "2026-11-01T00:00:00Z", "addons": {"sso_pack": 1}}
	sell(subscribed("sso", "pro", "past_due", overdue)).allow == false
	sell(subscribed("sso", "pro", "active", {"addons": {"sso_pack": 0}})).allow == false
	sell(subscribed("sso", "pro", "active", {"addons": {"unknown_pack": 4}})).allow == false
	unlimited := sell(with_usage(subscribed("storage_gb", "enterprise", "active", {"addons": {"extra_storage": 1}}), {"storage_gb": 5000}))
	unlimited.allow == true
	unlimited.limit == null
}

test_seats_are_what_was_bought_capped_by_the_tier if {
	bought := subscribed("seats", "pro", "active", {"quantity": 5})
	sell(with_usage(bought, {"seats": 4})).allow == true
	full := sell(with_usage(bought, {"seats": 5}))
	full.allow == false
	full.reason == "limit_exceeded"
	full.limit == 5
	capped := sell(with_usage(subscribed("seats", "pro", "active", {"quantity": 40}), {"seats": 30}))
	capped.limit == 25
	sell(with_usage(subscribed("seats", "enterprise", "active", {"quantity": 400}), {"seats": 399})).limit == 400
	# no subscription: the default tier's plain limit
	sell(with_usage(request("seats"), {"seats": 2})).limit == 3
}

test_an_override_beats_seats_bought if {
	doc := with_usage(subscribed("seats", "pro", "active", {"quantity": 5}), {"seats": 5})
	sell(with_override(doc, "seats", {"limit": 50}, null)).allow == true
}

# -- signed offline licenses ---------------------------------------------------------------------

license_facts := {
	"id": "lic-1",
	"issued_at": "2026-01-01T00:00:00Z",
	"not_after": "2026-12-01T00:00:00Z",
	"grace_until": "2026-12-15T00:00:00Z",
}

# An enterprise tenant whose account comes from the license above, decided at `at`.
licensed(feature, at) := object.union(subscribed(feature, "enterprise", "active", {}), {
	"now": at,
	"license": license_facts,
	"period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
})

test_a_license_in_force_decides_as_its_account_alone if {
	alone := subscribed("sso", "enterprise", "active", {})
	decide(licensed("sso", now)) == decide(alone)
	decide(licensed("sso", now)).license_grace_until == null
}

test_a_license_in_grace_still_allows_and_says_until_when if {
	d := decide(licensed("sso", "2026-12-03T00:00:00Z"))
	d.allow == true
	d.reason == "ok"
	d.tier == "enterprise"
	d.license_grace_until == "2026-12-15T00:00:00Z"
	d.valid_until == "2026-12-15T00:00:00Z" # the answer changes when the grace ends
}

test_a_license_in_grace_keeps_its_limits if {
	doc := object.union(licensed("api_calls", "2026-12-03T00:00:00Z"), {"account": object.union(
		licensed("api_calls", now).account,
		{"tier": "pro"},
	)})
	full := decide(with_usage(doc, {"api_calls": 1000}))
	full.allow == false
	full.reason == "limit_exceeded"
	full.license_grace_until == "2026-12-15T00:00:00Z"
}

test_a_license_past_its_grace_denies_every_feature if {
	every feature in ["sso", "dashboards", "api_calls", "made_up"] {
		d := decide(licensed(feature, "2026-12-15T00:00:00Z"))
		d.allow == false
		d.reason == "license_expired"
		d.valid_until == null
		d.license_grace_until == "2026-12-15T00:00:00Z"
	}
}

test_the_not_after_date_bounds_an_answer_before_it if {
	d := decide(object.union(licensed("sso", "2026-11-30T12:00:00Z"), {"period": {"start": "2026-11-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}}))
	d.valid_until == "2026-12-01T00:00:00Z"
}

test_a_license_belongs_to_its_tenant_only if {
	d := decide(request_with("dashboards", {"now": "2027-01-01T00:00:00Z", "license": null}))
	d.allow == true
	d.license_grace_until == null
}

# -- credits: the sidecar computes each check exactly; the policy picks the one that applies -----------

credit_plans := object.union(fixture_plans, {
	"credits": {"ai_credits": {"decimals": 2}},
	"tiers": {
		"free": {"rank": 0, "features": {"tokens": {"credits": {"ai_credits": "0.03"}}, "images": false}},
		"pro": {"rank": 10, "grace_days": 7, "features": {
			"tokens": {"credits": {"ai_credits": "0.01"}},
			"images": {"limit": 5, "credits": {"ai_credits": 2}},
		}},
	},
})

check(cost, sufficient) := {"type": "ai_credits", "cost": cost, "sufficient": sufficient}

# input.credits: the tiers' (and an override's) checks, and the balance of ai_credits.
credits_of(checks, balance, changes_at) := object.union(checks, {"balances": {"ai_credits": {
	"balance": balance,
	"changes_at": changes_at,
}}})

decide_credits(doc) := d if {
	d := entitlements.decision with input as doc with data.plans as credit_plans
}

test_credits_allow_when_the_check_is_sufficient if {
	checks := {"tiers": {"free": check("0.03", true), "pro": check("0.01", true)}}
	d := decide_credits(request_with("tokens", {"credits": credits_of(checks, "12.5", null)}))
	d.allow == true
	d.reason == "ok"
	d.credits == {"type": "ai_credits", "balance": "12.5", "cost": "0.03"}
}

test_credits_are_checked_at_the_applied_tiers_price if {
	checks := credits_of({"tiers": {"free": check("0.03", false), "pro": check("0.01", true)}}, "0.02", null)
	d := decide_credits(object.union(subscribed("tokens", "pro", "active", {}), {"credits": checks}))
	d.allow == true
	d.credits.cost == "0.01"
	overdue := decide_credits(object.union(
		subscribed("tokens", "pro", "past_due", {"past_due_since": "2026-10-01T00:00:00Z"}),
		{"credits": checks},
	))
	overdue.allow == false
	overdue.reason == "insufficient_credits" # the applied tier (free) prices it at 0.03
	overdue.tier == "free"
}

test_a_plan_denial_stays_the_plans if {
	d := decide_credits(object.union(
		subscribed("images", "pro", "active", {}),
		{"usage": {"images": 5}, "credits": credits_of({"tiers": {"pro": check(2, true)}}, 100, null)},
	))
	d.allow == false
	d.reason == "limit_exceeded"
	free := decide_credits(request_with("images", {"credits": credits_of({"tiers": {"pro": check(2, false)}}, 0, null)}))
	free.reason == "not_in_plan"
	free.credits == null
}

test_an_override_without_credits_lifts_the_price if {
	d := decide_credits(request_with("tokens", {
		"overrides": {"tokens": {"value": {}, "expires_at": null}},
		"credits": credits_of({"tiers": {"free": check("0.03", false)}}, 0, null),
	}))
	d.allow == true
	d.credits == null
}

test_an_override_with_credits_is_checked_at_its_price if {
	checks := {"tiers": {"free": check("0.03", true)}, "override": check(1, false)}
	d := decide_credits(request_with("tokens", {
		"overrides": {"tokens": {"value": {"credits": {"ai_credits": 1}}, "expires_at": null}},
		"credits": credits_of(checks, "0.5", null),
	}))
	d.allow == false
	d.reason == "insufficient_credits"
	d.credits == {"type": "ai_credits", "balance": "0.5", "cost": 1}
}

test_insufficient_credits_are_decided_by_the_credits_rule if {
	doc := request_with("tokens", {"credits": credits_of({"tiers": {"free": check("0.03", false)}}, 0, null)})
	r := entitlements.decided_by with input as doc with data.plans as credit_plans
	r == {"rule": "credits", "tier": "free", "addons": []}
}

test_a_grant_that_expires_bounds_the_answer if {
	checks := credits_of({"tiers": {"free": check("0.03", true)}}, 5, "2026-11-25T00:00:00Z")
	d := decide_credits(request_with("tokens", {"credits": checks}))
	d.valid_until == "2026-11-25T00:00:00Z"
}

# -- which rule decided (what `tiergate explain` names) ----------------------------------------------

decided(doc) := r if {
	r := entitlements.decided_by with input as doc with data.plans as fixture_plans
}

decided_sold(doc) := r if {
	r := entitlements.decided_by with input as doc with data.plans as selling_plans
}

overdue_pro := subscribed("reports", "pro", "past_due", {"past_due_since": "2026-11-10T00:00:00Z"})

test_decided_by_names_the_rule_of_each_branch_of_the_decision if {
	decided(request("teleport")) == {"rule": "known_feature", "tier": "free", "addons": []}
	decided(with_override(overdue_pro, "reports", true, null)) == {"rule": "override", "tier": "free", "addons": []}
	decided(overdue_pro) == {"rule": "restriction", "tier": "free", "addons": []}
	decided(subscribed("reports", "pro", "unpaid", {})).rule == "restriction"
	decided(request("reports")) == {"rule": "tier_value", "tier": "free", "addons": []}
	decided(subscribed("reports", "pro", "active", {})) == {"rule": "tier_value", "tier": "pro", "addons": []}
	decided(request_with("api_calls", {"usage": {"api_calls": 100}})) == {"rule": "metered", "tier": "free", "addons": []}
	decided(licensed("sso", "2026-12-15T00:00:00Z")).rule == "license_expired"
	stale := entitlements.decided_by with input as request_with("dashboards", {"replica": {"age_seconds": 120}})
		with data.plans as fixture_plans
		with data.tiergate.entitlements.max_replica_age_seconds as 60
	stale.rule == "replica_stale"
}

# A restricted account whose paid tier would deny too: the default tier's own answer decided.
test_decided_by_is_the_tier_when_the_restriction_changes_nothing if {
	overdue_free_feature := subscribed("dashboards", "pro", "past_due", {"past_due_since": "2026-11-10T00:00:00Z"})
	decided(overdue_free_feature) == {"rule": "tier_value", "tier": "free", "addons": []}
	decide(overdue_free_feature).reason == "ok"
}

test_decided_by_names_the_addons_that_changed_the_answer if {
	storage := subscribed("storage_gb", "pro", "active", {"addons": {"extra_storage": 2}})
	decided_sold(storage) == {"rule": "metered", "tier": "pro", "addons": ["extra_storage"]}
	decided_sold(subscribed("sso", "pro", "active", {"addons": {"sso_pack": 1}})).addons == ["sso_pack"]
	# unlimited stays unlimited: the credits changed nothing
	decided_sold(subscribed("reports", "pro", "active", {"addons": {"reports_credits": 3}})).addons == []
	# not granted: the add-ons do not count
	overdue := {"past_due_since": "2026-11-01T00:00:00Z", "addons": {"sso_pack": 1}}
	decided_sold(subscribed("sso", "pro", "past_due", overdue)).addons == []
}

# `decided_by` follows `decision`: over every feature, tier and status, its tier is the decision's,
# and its rule matches the decision's reason.
test_decided_by_agrees_with_every_decision if {
	every feature in ["api_calls", "dashboards", "reports", "exports", "sso", "made_up"] {
		every tier in ["free", "pro", "enterprise"] {
			every status in ["active", "trialing", "past_due", "unpaid", "canceled"] {
				doc := with_usage(
					subscribed(feature, tier, status, {"trial_end": "2026-11-20T00:00:00Z", "past_due_since": "2026-11-01T00:00:00Z"}),
					{"api_calls": 1000},
				)
				d := decide(doc)
				r := decided(doc)
				r.tier == d.tier
				rule_for_reason(d, r.rule)
			}
		}
	}
}

rule_for_reason(d, "known_feature") if d.reason == "unknown_feature"

rule_for_reason(d, "restriction") if d.reason in {"payment_overdue", "trial_expired", "subscription_inactive"}

rule_for_reason(d, "metered") if {
	d.reason in {"ok", "limit_exceeded"}
	d.limit != null
}

rule_for_reason(d, "tier_value") if {
	d.reason in {"ok", "not_in_plan"}
	d.limit == null
}
