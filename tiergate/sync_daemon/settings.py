"""The sync daemon's settings: environment variables prefixed TIERGATE_ (and an optional .env file)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tiergate.bounded import ListenerSettings
from tiergate.errors import SettingsError
from tiergate.settings_errors import describe_settings_error
from tiergate.sync_daemon.mirror.store import Retention
from tiergate.token_rules import checked_secret, checked_tokens

HOST_PATTERN = re.compile(r"(\*\.)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}")  # a host name, no port
# Secret and restricted keys; a publishable key (pk_) is meant for browsers and reads nothing.
SECRET_KEY_PREFIXES = ("sk_", "rk_")


class MirrorSettings(BaseSettings):
    """Where the mirror is: all that the commands working on it directly need (`usage resend`)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", frozen=True, extra="ignore")

    mirror_path: Path = Path(".state/mirror.db")
    # postgresql://user:password@host:5432/db?sslmode=verify-full selects PostgreSQL (schema
    # `tiergate`) instead of the SQLite file; libpq's PG* variables fill in what the URL leaves out.
    mirror_url: SecretStr | None = None

    @field_validator("mirror_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # an empty variable (a chart value left blank) means SQLite
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "must start with postgresql:// (unset it to use the SQLite file at TIERGATE_MIRROR_PATH)"
            )
        return value

    @property
    def mirror_location(self) -> str:
        """Where the mirror is: the PostgreSQL URL when set, else `sqlite:PATH`."""
        return self.mirror_url.get_secret_value() if self.mirror_url else f"sqlite:{self.mirror_path}"


class DaemonSettings(MirrorSettings, ListenerSettings):
    """Everything the daemon reads; the mirror's location comes first (MirrorSettings)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", frozen=True, extra="ignore")

    stripe_api_key: SecretStr
    stripe_api_base: AnyHttpUrl = AnyHttpUrl("https://api.stripe.com")
    stripe_webhook_secret: SecretStr
    stripe_refetch: bool = True
    stripe_max_network_retries: Annotated[int, Field(ge=0, le=10)] = 2
    stripe_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    tenant_metadata_key: Annotated[str, Field(min_length=1, max_length=40)] = "tenant_id"
    daemon_host: str = "127.0.0.1"
    daemon_port: Annotated[int, Field(ge=0, le=65535)] = 9190
    mirror_pool_size: Annotated[int, Field(ge=1, le=100)] = 8
    # With PostgreSQL one daemon (an advisory lock's holder) runs the scheduled jobs; the others
    # try to take over this often.
    leader_check_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    feed_token: SecretStr
    # The billing API (/v1/checkout/sessions, /v1/subscriptions/...) answers 503 until this is set.
    api_token: SecretStr | None = None
    # Support's read-only token (tenant lookups, decisions, the console's reading), and the console
    # operator's (reading, plus overrides from the console). Each may list several, comma-separated.
    console_token: SecretStr | None = None
    console_operator_token: SecretStr | None = None
    # The Rego policies the daemon evaluates read-only to show what a sidecar would answer.
    policies: Path = Path("policies")
    # Hosts Checkout and the portal may send a customer back to (comma-separated; `*.example.com`
    # for subdomains). Empty: any http(s) URL, with a warning at start while the billing API is on.
    redirect_hosts: str = ""
    proration_behavior: Literal["create_prorations", "always_invoice", "none"] = "create_prorations"
    reconcile_interval_s: Annotated[float, Field(gt=0)] = 300.0
    reconcile_at_start: bool = True
    plans: Path = Path("plans/plans.yaml")
    # The change log keeps the newest CHANGE_RETENTION entries, none older than the days below;
    # a follower further behind re-snapshots (410).
    change_retention: Annotated[int, Field(ge=1)] = 100_000
    change_retention_days: Annotated[float, Field(gt=0)] = 7.0
    # Retention (run by the leader every retention_interval_s): webhook ids are kept long past
    # Stripe's 3-day retries; usage events and counters of ended periods for the platform's SQL.
    processed_event_retention_days: Annotated[float, Field(ge=4)] = 30.0
    usage_event_retention_days: Annotated[float, Field(gt=0)] = 90.0
    closed_period_retention_days: Annotated[float, Field(gt=0)] = 400.0
    # Account versions (each with the Stripe event or action behind it): a tenant's newest stays.
    account_version_retention_days: Annotated[float, Field(gt=0)] = 90.0
    decision_record_retention_days: Annotated[float, Field(gt=0)] = 14.0
    retention_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    feed_max_wait_s: Annotated[float, Field(gt=0, le=30)] = 30.0
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    # A signed event dated further ahead of this daemon's clock is refused (400, counted, logged).
    webhook_future_tolerance_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # Quota leases (`enforcement: leased`): a lease not renewed for this long returns its units.
    lease_ttl_s: Annotated[float, Field(ge=2, le=3600)] = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    # OpenTelemetry (the tiergate[otel] extra): spans over OTLP/HTTP to this base URL (/v1/traces is
    # appended); unset: OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing at all.
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = None
    # Usage sinks (off unless configured): each forwards the stored events with its own cursor.
    lago_api_url: AnyHttpUrl | None = None
    lago_api_key: SecretStr | None = None
    lago_batch_size: Annotated[int, Field(ge=1, le=100)] = 100
    # The Stripe meter sink: metrics with a `meter` in the catalog go to Stripe meter events.
    stripe_meter_sink: bool = False
    stripe_meter_batch_size: Annotated[int, Field(ge=1, le=1000)] = 50
    sink_poll_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    sink_backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    sink_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # Outbound webhooks to the platform (comma-separated http(s) URLs), signed with the secret.
    webhook_endpoints: str = ""
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: Annotated[int, Field(ge=1, le=100)] = 12
    webhook_retry_base_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    webhook_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    webhook_grace_scan_s: Annotated[float, Field(gt=0, le=86400)] = 60.0

    @model_validator(mode="after")
    def _lago_needs_both(self) -> DaemonSettings:
        if (self.lago_api_url is None) != (self.lago_api_key is None):
            raise ValueError(
                "TIERGATE_LAGO_API_URL and TIERGATE_LAGO_API_KEY go together: set both to turn the Lago "
                "sink on, or neither"
            )
        return self

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> DaemonSettings:
        if self.webhook_endpoints.strip() and self.webhook_secret is None:
            raise ValueError(
                "TIERGATE_WEBHOOK_ENDPOINTS needs TIERGATE_WEBHOOK_SECRET: receivers verify each delivery with it"
            )
        return self

    @field_validator("webhook_endpoints")
    @classmethod
    def _endpoint_list(cls, value: str) -> str:
        bad = [url for url in _split(value) if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an http(s) URL")
        return value

    @property
    def webhook_endpoint_list(self) -> list[str]:
        return _split(self.webhook_endpoints)

    @field_validator("feed_token", "api_token", "console_token", "console_operator_token")
    @classmethod
    def _long_tokens(cls, tokens: SecretStr | None) -> SecretStr | None:
        # Each comma-separated token on its own: an empty one must not open the feed (with
        # `Authorization: Bearer` and nothing after), a short one must not be guessable.
        return checked_tokens(tokens)

    @field_validator("stripe_webhook_secret", "webhook_secret")
    @classmethod
    def _long_secrets(cls, secret: SecretStr | None) -> SecretStr | None:
        return checked_secret(secret)

    @field_validator("redirect_hosts")
    @classmethod
    def _host_list(cls, value: str) -> str:
        bad = [host for host in _split(value) if not HOST_PATTERN.fullmatch(host)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a host name (app.example.com) or a *.example.com pattern")
        return value

    @property
    def redirect_host_list(self) -> list[str]:
        return _split(self.redirect_hosts)

    def retention(self) -> Retention:
        return Retention(
            processed_events=timedelta(days=self.processed_event_retention_days),
            usage_events=timedelta(days=self.usage_event_retention_days),
            closed_periods=timedelta(days=self.closed_period_retention_days),
            account_versions=timedelta(days=self.account_version_retention_days),
            decision_records=timedelta(days=self.decision_record_retention_days),
        )

    @field_validator("stripe_api_key")
    @classmethod
    def _secret_key(cls, key: SecretStr) -> SecretStr:
        prefix = key.get_secret_value().split("_", 1)[0] + "_"
        if prefix not in SECRET_KEY_PREFIXES:
            kind = (
                "a publishable key (pk_), which cannot read subscriptions"
                if prefix == "pk_"
                else "no Stripe secret key"
            )
            raise ValueError(
                f"this is {kind}; TIERGATE_STRIPE_API_KEY takes a secret key (sk_test_…, sk_live_…) "
                "or a restricted key (rk_…) from the Stripe dashboard's API keys page"
            )
        return key

    @property
    def stripe_base(self) -> str:
        return str(self.stripe_api_base).rstrip("/")


def _split(hosts: str) -> list[str]:
    return [host.strip() for host in hosts.split(",") if host.strip()]


def load_settings() -> DaemonSettings:
    """Read the environment once; a bad or missing variable is a SettingsError naming it."""
    try:
        return DaemonSettings()
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None


class UsageResendSettings(MirrorSettings):
    """`tiergate usage resend`: the mirror, and whether each sink is switched on (to warn if not)."""

    lago_api_url: AnyHttpUrl | None = None
    lago_api_key: SecretStr | None = None
    stripe_meter_sink: bool = False

    def sink_off(self, sink: str) -> str | None:
        """Why SINK sends nothing until configured, or None when it is on."""
        if sink == "lago" and (self.lago_api_url is None or self.lago_api_key is None):
            return "the lago sink is not configured (TIERGATE_LAGO_API_URL and TIERGATE_LAGO_API_KEY)"
        if sink == "stripe_meters" and not self.stripe_meter_sink:
            return "the stripe_meters sink is off (TIERGATE_STRIPE_METER_SINK)"
        return None


def load_resend_settings() -> UsageResendSettings:
    """The mirror's location and the sinks' switches; a bad variable is a SettingsError naming it."""
    try:
        return UsageResendSettings()
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None
