"""The TierError family: every error a user can see, each with a stable machine-readable code.

Every error class of both processes lives here, so one file answers "what can this API say?".
The HTTP status is the class's `status`; the JSON body is `{"error": {"code", "message", "field"}}`.

    TierError (500)
    ├── BadRequestError          400 bad_request            input that names its field
    ├── ReplicaError             400 invalid_replica        replica file or import document unusable
    ├── WebhookRejectedError     400 webhook_rejected       signature, timestamp or body not trusted
    ├── InvalidTenantError       400 invalid_tenant         a tenant id breaks the rule (tiergate.models)
    ├── UnauthorizedError        401 unauthorized           missing or wrong bearer token
    ├── UnauthenticatedError     401 unauthenticated        ingress hook: no trusted tenant (header, JWT)
    ├── NotFoundError            404 not_found
    ├── NoSubscriptionError      409 no_subscription        billing action needs a subscription
    ├── ConflictError            409 conflict
    │   └── OverageRejectedError 409 overage_rejected     a hold's settle beyond it that the limit refuses
    ├── FeedGapError             410 feed_gap               follower must re-snapshot
    ├── UnsupportedByStripeError 501 unsupported_by_stripe_api
    ├── StripeActionError        502 stripe_error           Stripe refused a billing action
    ├── EngineUnavailableError   503 engine_unavailable     policy engine (OPA server) away
    ├── OutboxError              503 outbox_unavailable     sidecar's usage outbox cannot commit
    ├── ReplicaNotReadyError     503 replica_not_ready      no snapshot yet (TIERGATE_NOT_READY_ANSWER=unavailable)
    ├── MirrorError              503 mirror_unavailable     daemon's mirror cannot commit
    ├── BillingUnavailableError  503 stripe_unavailable     Stripe gave no usable answer
    ├── BillingDisabledError     503 billing_api_disabled   no TIERGATE_API_TOKEN / Stripe key
    ├── CatalogError             500 invalid_catalog        plans.yaml (at start: the process exits)
    ├── PolicyError              500 policy_error           Rego failed to load or evaluate
    ├── SettingsError            500 invalid_settings       a TIERGATE_* variable (at start)
    ├── LicenseError             500 invalid_license        a signed license refused (at start: the sidecar exits)
    ├── ListenError              500 cannot_listen          a server's port is taken (at start)
    ├── SidecarUnreachableError  503 sidecar_unreachable    (client) no usable answer from the sidecar
    └── SidecarRejectedError     4xx (the sidecar's code)   (client) the sidecar refused a call
"""

from __future__ import annotations


class TierError(Exception):
    """Base class; `code` is rendered in every error response and log line."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BadRequestError(TierError):
    code = "bad_request"
    status = 400


class CatalogError(TierError):
    """plans.yaml is missing, not YAML, or breaks the schema; `problems` lists (path, message)."""

    code = "invalid_catalog"

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class PolicyError(TierError):
    """A Rego policy failed to load (syntax, missing package) or to evaluate."""

    code = "policy_error"


class EngineUnavailableError(TierError):
    code = "engine_unavailable"
    status = 503


class ReplicaError(TierError):
    """The replica file or an import document is unusable."""

    code = "invalid_replica"
    status = 400


class SettingsError(TierError):
    code = "invalid_settings"


class LicenseError(TierError):
    """A signed offline license that does not verify, lacks a claim, or cannot be read."""

    code = "invalid_license"


class ReplicaNotReadyError(TierError):
    code = "replica_not_ready"
    status = 503


class OutboxError(TierError):
    code = "outbox_unavailable"
    status = 503


class NotFoundError(TierError):
    code = "not_found"
    status = 404


class BillingDisabledError(TierError):
    code = "billing_api_disabled"
    status = 503


class StripeActionError(TierError):
    """Stripe refused or failed a billing action: 502 with Stripe's own message and request id."""

    code = "stripe_error"
    status = 502

    def __init__(
        self, message: str, *, request_id: str | None = None, stripe_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.stripe_code = stripe_code

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        error = body["error"]
        assert isinstance(error, dict)
        error.update(request_id=self.request_id, stripe_code=self.stripe_code)
        return body


class UnsupportedByStripeError(TierError):
    """The Stripe API at TIERGATE_STRIPE_API_BASE lacks what this action needs (an emulator)."""

    code = "unsupported_by_stripe_api"
    status = 501


class NoSubscriptionError(TierError):
    code = "no_subscription"
    status = 409


class ConflictError(TierError):
    code = "conflict"
    status = 409


class OverageRejectedError(ConflictError):
    """A settle asked more than its hold with `overage: reject`, and the limit has no room for the rest."""

    code = "overage_rejected"


class MirrorError(TierError):
    code = "mirror_unavailable"
    status = 503


class WebhookRejectedError(TierError):
    """A webhook whose signature, timestamp or body we cannot trust: 400, nothing stored."""

    code = "webhook_rejected"
    status = 400


class InvalidTenantError(TierError):
    """A tenant id (e.g. from Stripe metadata) that breaks the one rule for tenant ids."""

    code = "invalid_tenant"
    status = 400


class BillingUnavailableError(TierError):
    """Stripe (or the emulator at TIERGATE_STRIPE_API_BASE) gave no usable answer."""

    code = "stripe_unavailable"
    status = 503


class UnauthorizedError(TierError):
    code = "unauthorized"
    status = 401


class FeedGapError(TierError):
    """The follower's position is older than the retained change log: it must re-snapshot."""

    code = "feed_gap"
    status = 410


class ListenError(TierError):
    """A server could not bind its address: the port is taken, or the host does not resolve."""

    code = "cannot_listen"


class SidecarUnreachableError(TierError):
    """The client got no answer from the sidecar (refused, reset, timed out, or a 5xx)."""

    code = "sidecar_unreachable"
    status = 503


class SidecarRejectedError(TierError):
    """The sidecar answered a client's call with a 4xx; `code` is the sidecar's own error code."""

    status = 400

    def __init__(self, message: str, *, code: str, status: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code
        self.status = status


def dotted_location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a path a person reads: `events[3].properties.gb`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class UnauthenticatedError(TierError):
    """The ingress hook found no tenant it can trust: no header, or a token that does not verify."""

    code = "unauthenticated"
    status = 401
