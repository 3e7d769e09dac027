# Ingress routes: which catalog route (data.plans.routes) gates an HTTP request.
#
# Input: {"method": "POST", "path": "/api/v1/reports/x"} from the sidecar's /v1/authz hook.
# Output, the `route` document:
#   matched: {"matched": true, "index": i, "feature": f | null, "usage": u | null, "action": "check"}
#   no match: {"matched": false, "index": null, "feature": null, "usage": null,
#              "action": data.plans.ingress.unmatched}   # "allow" or "deny"
# The sidecar then asks the entitlements policy about `feature` and records `usage`.
package tiergate.ingress

import rego.v1

route := matched_route if {
	count(matching_indexes) > 0
} else := unmatched_route

# Routes are ordered: the first match wins, so a broad catch-all such as "/api/**" can sit at the
# end of the list without shadowing the specific routes above it.
first_match := min(matching_indexes)

matching_indexes contains i if {
	some i, candidate in data.plans.routes
	method_matches(object.get(candidate, "method", "*"))
	glob.match(candidate.path, ["/"], input.path) # "*" is one path segment, "**" any number
}

method_matches("*") := true

method_matches(method) if method == input.method

matched_route := {
	"matched": true,
	"index": first_match,
	"feature": object.get(data.plans.routes[first_match], "feature", null),
	"usage": object.get(data.plans.routes[first_match], "usage", null),
	"action": "check",
}

unmatched_route := {
	"matched": false,
	"index": null,
	"feature": null,
	"usage": null,
	"action": unmatched_action,
}

# What to do with a request no route covers: "allow" (the default) lets it through ungated.
default unmatched_action := "allow"

unmatched_action := data.plans.ingress.unmatched
