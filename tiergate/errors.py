"""The TierError family: every error a user can see, each with a stable machine-readable code."""

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


class UnauthenticatedError(TierError):
    """The ingress hook found no tenant it can trust: no header, or a token that does not verify."""

    code = "unauthenticated"
    status = 401
