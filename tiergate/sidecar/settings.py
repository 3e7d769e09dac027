"""The sidecar's settings: environment variables prefixed TIERGATE_ (and an optional .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from tiergate.bounded import ListenerSettings
from tiergate.token_rules import checked_tokens


class SidecarSettings(ListenerSettings):
    model_config = SettingsConfigDict(env_prefix="TIERGATE_", frozen=True, extra="ignore")

    sidecar_host: str = "127.0.0.1"
    sidecar_port: Annotated[int, Field(ge=0, le=65535)] = 9191
    replica_path: Path = Path(".state/replica.db")
    plans: Path = Path("plans/plans.yaml")
    policies: Path = Path("policies")
    engine: Literal["embedded", "opa"] = "embedded"
    # The embedded engine runs policies on regorus's compiled VM (~4x faster than its interpreter).
    engine_vm: bool = True
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    opa_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8181")
    engine_timeout_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    # /v1/authz records one unit of a route's `usage` metric for each request it lets through.
    authz_record_usage: bool = True
    tenant_header: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9-]+$")] = "X-Tenant-Id"
    # The ingress hook (issue 10): where its tenant comes from, its dedup key, its own listeners.
    authz_identity: Literal["header", "jwt"] = "header"
    jwt_secret: SecretStr | None = None  # HS256
    jwt_jwks_path: Path | None = None  # RS256 / ES256 public keys
    jwt_tenant_claim: Annotated[str, Field(min_length=1)] = "tenant"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    # Only a header the proxy itself generates (NGINX's $request_id); unset, every call counts.
    authz_request_id_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")] | None = None
    authz_replay_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    authz_replay_max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    # An authz-only listener an ingress controller in another pod can reach (e.g. the pod IP).
    authz_host: str | None = None
    authz_port: Annotated[int, Field(ge=0, le=65535)] = 9192
    # Health, readiness and metrics only, for probes and Prometheus (e.g. the pod IP); unset: none.
    diagnostics_host: str | None = None
    diagnostics_port: Annotated[int, Field(ge=0, le=65535)] = 9194
    # GET /v1/check alone on a raw HTTP/1.1 protocol (tiergate/sidecar/api/check_listener.py), on
    # TIERGATE_SIDECAR_HOST; unset: none.
    check_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    check_request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Envoy / Istio gRPC ext_authz; 9191 is OPA-Envoy's (and this sidecar's HTTP) port.
    authz_grpc_host: str | None = None
    authz_grpc_port: Annotated[int, Field(ge=0, le=65535)] = 9193
    # Candidate policies (and catalog) evaluated beside the live ones on a sample of fresh decisions.
    shadow_policies: Path | None = None
    shadow_plans: Path | None = None  # default: the live catalog
    shadow_sample: Annotated[float, Field(ge=0, le=1)] = 0.1
    # Materialised decisions: a memory budget (0 disables them) and an optional entry count bound.
    decision_cache_mb: Annotated[float, Field(ge=0)] = 64.0
    decision_cache_size: Annotated[int, Field(ge=0)] | None = None
    decision_cache_ttl_s: Annotated[float, Field(ge=0)] = 0.0
    decision_log_sample: Annotated[float, Field(ge=0, le=1)] = 0.01
    decision_log_denies: bool = True
    # Recent decisions kept with their input for GET /v1/decisions/{id}: every deny and this share
    # of allows, within a memory budget (0 turns recording off). Deny records also wait, at most
    # decision_record_ship_queue of them, to be shipped to the daemon with the usage deliveries.
    decision_record_mb: Annotated[float, Field(ge=0)] = 4.0
    decision_record_allow_sample: Annotated[float, Field(ge=0, le=1)] = 0.01
    decision_record_ship_queue: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    # Quota leases (`enforcement: leased`): the longest a reserve waits for one refill of its
    # lease before it is denied `quota_unavailable`.
    lease_wait_ms: Annotated[int, Field(ge=0, le=10_000)] = 50
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 1000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    # OpenTelemetry (the tiergate[otel] extra): spans over OTLP/HTTP to this base URL (/v1/traces is
    # appended); unset: OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing at all.
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = None
    # Following a sync daemon: unset means static mode (a replica from import, usage not delivered).
    daemon_url: AnyHttpUrl | None = None
    feed_token: SecretStr | None = None
    staleness_budget_s: Annotated[float, Field(gt=0)] = 300.0
    # What a check gets before the first snapshot from the daemon: a `replica_not_ready` deny, or
    # a 503 (the caller's own fallback decides).
    not_ready_answer: Literal["deny", "unavailable"] = "deny"
    follower_backoff_max_s: Annotated[float, Field(gt=0, le=300)] = 15.0
    # Self-hosted installs: a signed offline license (tiergate/license.py) is the replica's source
    # instead of a daemon; verified against each comma-separated public key (several: a rotation),
    # and both files re-read every license_check_every_s for a renewal.
    license_path: Path | None = None
    license_public_keys: str | None = None
    license_check_every_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # How long a replica write waits for another writer (`tiergate replica import`) before the
    # follower counts a failure and retries.
    replica_busy_timeout_s: Annotated[float, Field(ge=0, le=300)] = 10.0
    # Usage: the outbox defaults to outbox.db beside the replica; unlike the replica it
    # holds data found nowhere else until delivered, so it needs the same volume's durability.
    outbox_path: Path | None = None
    outbox_retention_s: Annotated[float, Field(ge=0)] = 3600.0
    outbox_sync: Literal["full", "normal"] = "full"
    # A reservation's own transaction_id outlives its pruned rows this long (a replay is still
    # recognised): ~100 bytes per named reservation. Generated ids (authz) are never kept.
    outbox_reservation_id_retention_s: Annotated[float, Field(ge=0)] = 7 * 86400.0
    delivery_batch_size: Annotated[int, Field(ge=1, le=1000)] = 500
    # Keep it under the daemon's TIERGATE_MAX_BODY_BYTES (1 MiB by default) with room to spare.
    delivery_max_bytes: Annotated[int, Field(ge=8192, le=64 * 1024 * 1024)] = 512 * 1024
    # Let a burst gather before a delivery: fewer, larger batches, and short in-flight windows
    # (a reserve for a tenant in flight waits for the answer, see docs/adr/0004).
    delivery_linger_s: Annotated[float, Field(ge=0, le=5)] = 0.05
    delivery_backoff_max_s: Annotated[float, Field(gt=0, le=300)] = 10.0

    @field_validator("feed_token")
    @classmethod
    def _long_tokens(cls, tokens: SecretStr | None) -> SecretStr | None:
        # Each of the comma-separated tokens (the first is sent, the rest are a rotation's).
        return checked_tokens(tokens)

    @model_validator(mode="after")
    def _one_source_of_accounts(self) -> SidecarSettings:
        keys = [k for k in (self.license_public_keys or "").split(",") if k.strip()]
        if self.license_path is not None and not keys:
            raise ValueError(
                "TIERGATE_LICENSE_PATH needs TIERGATE_LICENSE_PUBLIC_KEYS (the comma-separated paths of "
                "the public keys that may have signed it)"
            )
        if self.license_path is None and keys:
            raise ValueError("TIERGATE_LICENSE_PUBLIC_KEYS is set but TIERGATE_LICENSE_PATH is not")
        if self.license_path is not None and self.daemon_url is not None:
            raise ValueError(
                "TIERGATE_LICENSE_PATH and TIERGATE_DAEMON_URL are both set: the replica's accounts come "
                "from a signed license or from a sync daemon, not both; unset one"
            )
        return self

    @model_validator(mode="after")
    def _ingress_is_consistent(self) -> SidecarSettings:
        if self.authz_identity == "jwt" and self.jwt_secret is None and self.jwt_jwks_path is None:
            raise ValueError(
                "TIERGATE_AUTHZ_IDENTITY=jwt needs TIERGATE_JWT_SECRET (HS256) or TIERGATE_JWT_JWKS_PATH"
                " (RS256/ES256)"
            )
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError(
                "TIERGATE_JWT_SECRET must be at least 32 bytes (RFC 7518: an HS256 key >= the hash)"
            )
        if self.authz_host is not None and self.authz_port == 0:
            raise ValueError(
                "TIERGATE_AUTHZ_PORT must be a fixed port (not 0) when TIERGATE_AUTHZ_HOST is set"
            )
        if self.authz_host is not None and self.authz_port == self.sidecar_port:
            raise ValueError(
                f"TIERGATE_AUTHZ_PORT={self.authz_port} is also TIERGATE_SIDECAR_PORT; the authz-only"
                " listener needs a port of its own"
            )
        if self.check_port is not None and self.check_port != 0 and self.check_port == self.sidecar_port:
            raise ValueError(
                f"TIERGATE_CHECK_PORT={self.check_port} is also TIERGATE_SIDECAR_PORT; the check"
                " listener needs a port of its own"
            )
        if self.diagnostics_host is not None and self.diagnostics_port in {0, self.sidecar_port}:
            raise ValueError(
                f"TIERGATE_DIAGNOSTICS_PORT={self.diagnostics_port} must be a fixed port of its own "
                "(not 0, not TIERGATE_SIDECAR_PORT) when TIERGATE_DIAGNOSTICS_HOST is set"
            )
        return self

    @property
    def sent_feed_token(self) -> str | None:
        """The token this sidecar presents to the daemon: the first of TIERGATE_FEED_TOKEN's
        comma-separated tokens (the daemon accepts each of its own, see tiergate.web.bearer_tokens)."""
        if self.feed_token is None:
            return None
        tokens = [t.strip() for t in self.feed_token.get_secret_value().split(",") if t.strip()]
        return tokens[0] if tokens else None
