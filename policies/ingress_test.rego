# Unit tests for ingress.rego, against a small catalog of their own (not plans/plans.yaml).
package tiergate.ingress_test

import rego.v1

import data.tiergate.ingress

fixture_routes := [
	{"method": "POST", "path": "/api/v1/reports/*", "feature": "reports", "usage": "api_calls"},
	{"method": "GET", "path": "/api/v1/reports/**", "feature": "reports"},
	{"method": "*", "path": "/api/v1/admin/**", "feature": "audit_log"},
	{"path": "/sso/**", "feature": "sso"}, # no method: any method
	{"method": "*", "path": "/api/**", "usage": "api_calls"}, # the catch-all comes last
]

plans_with(unmatched) := {
	"default_tier": "free",
	"tiers": {"free": {"rank": 0, "features": {"reports": false}}},
	"routes": fixture_routes,
	"ingress": {"unmatched": unmatched},
}

route_for(method, path) := r if {
	r := ingress.route with input as {"method": method, "path": path} with data.plans as plans_with("allow")
}

test_matched_route_is_the_full_document if {
	route_for("POST", "/api/v1/reports/x") == {
		"matched": true,
		"index": 0,
		"feature": "reports",
		"usage": "api_calls",
		"action": "check",
	}
}

test_first_match_wins if {
	# "/api/v1/reports/x" also matches the catch-all at index 4
	route_for("POST", "/api/v1/reports/x").index == 0
}

test_first_match_wins_whatever_the_order if {
	reordered := array.concat([fixture_routes[4]], fixture_routes)
	r := ingress.route with input as {"method": "POST", "path": "/api/v1/reports/x"}
		with data.plans as object.union(plans_with("allow"), {"routes": reordered})
	r.index == 0
	r.feature == null
	r.usage == "api_calls"
}

test_single_star_is_one_segment if {
	r := route_for("POST", "/api/v1/reports/x/y")
	r.index == 4
	r.feature == null
}

test_double_star_is_any_segments if {
	r := route_for("GET", "/api/v1/reports/x/y/z")
	r.index == 1
	r.usage == null
}

test_method_must_be_equal if {
	route_for("DELETE", "/api/v1/reports/x").index == 4
}

test_method_star_matches_any if {
	route_for("DELETE", "/api/v1/admin/users").index == 2
}

test_method_absent_matches_any if {
	route_for("PATCH", "/sso/callback").index == 3
}

test_double_star_needs_a_separator if {
	# "/api/**" covers what is under /api/, not "/api" itself (the same on regorus and OPA)
	route_for("GET", "/api").matched == false
}

test_unmatched_allow if {
	route_for("GET", "/healthz") == {
		"matched": false,
		"index": null,
		"feature": null,
		"usage": null,
		"action": "allow",
	}
}

test_unmatched_deny if {
	r := ingress.route with input as {"method": "GET", "path": "/healthz"}
		with data.plans as plans_with("deny")
	r.matched == false
	r.action == "deny"
}

test_unmatched_defaults_to_allow_without_ingress_settings if {
	r := ingress.route with input as {"method": "GET", "path": "/healthz"}
		with data.plans as {"default_tier": "free", "tiers": {}, "routes": fixture_routes}
	r.action == "allow"
}

test_no_routes_at_all if {
	r := ingress.route with input as {"method": "GET", "path": "/api/v1/x"}
		with data.plans as {"default_tier": "free", "tiers": {}, "routes": []}
	r.matched == false
}
