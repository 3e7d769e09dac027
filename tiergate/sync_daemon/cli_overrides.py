"""`tiergate overrides set|rm|ls`: per-tenant overrides through the daemon's API (TIERGATE_API_TOKEN)."""

from __future__ import annotations

import getpass
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import click

_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_value(text: str) -> bool | dict[str, int]:
    """`true`, `false`, `unlimited` ({}) or a number N ({limit: N})."""
    lowered = text.strip().lower()
    if lowered in ("true", "on"):
        return True
    if lowered in ("false", "off"):
        return False
    if lowered in ("unlimited", "{}"):
        return {}
    if lowered.isdigit():
        return {"limit": int(lowered)}
    raise click.BadParameter(f"{text!r}: give true, false, unlimited or a limit such as 5000000")


def expiry(expires_at: str | None, lasting: str | None, now: datetime) -> str | None:
    """The RFC 3339 expiry from --expires-at, or now + --for (30m, 12h, 14d, 2w)."""
    if expires_at and lasting:
        raise click.UsageError("give --expires-at or --for, not both")
    if lasting:
        match = _DURATION.match(lasting.strip())
        if match is None:
            raise click.BadParameter(
                f"{lasting!r}: give a duration such as 30m, 12h, 14d or 2w", param_hint="--for"
            )
        delta = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return (now + delta).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return expires_at


def os_user() -> str | None:
    """Who runs the command, as the OS knows them (None when it cannot say, e.g. a uid without a name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


ACTOR_OPTION = click.option(
    "--actor",
    envvar="TIERGATE_ACTOR",
    show_envvar=True,
    default=os_user,
    show_default="the OS user",
    help="Who asks (kept in the audit trail).",
)


def daemon_options(fn: Any) -> Any:
    fn = click.option(
        "--daemon-url", envvar="TIERGATE_DAEMON_URL", default="http://127.0.0.1:9190", show_default=True
    )(fn)
    return click.option("--token", envvar="TIERGATE_API_TOKEN", required=True, help="or TIERGATE_API_TOKEN")(
        fn
    )


@click.group()
def overrides() -> None:
    """Per-tenant overrides and grants (the daemon's /v1/tenants/{tenant}/overrides)."""


@overrides.command("set")
@click.argument("tenant")
@click.argument("feature")
@click.argument("value")
@click.option("--reason", required=True, help="Why: kept in the audit trail.")
@click.option("--expires-at", help="RFC 3339 time the override ends, e.g. 2026-12-31T00:00:00Z.")
@click.option("--for", "lasting", help="How long it lasts from now: 30m, 12h, 14d, 2w.")
@ACTOR_OPTION
@daemon_options
def overrides_set(
    tenant: str,
    feature: str,
    value: str,
    reason: str,
    expires_at: str | None,
    lasting: str | None,
    actor: str | None,
    daemon_url: str,
    token: str,
) -> None:
    """Give TENANT the VALUE of FEATURE (true, false, unlimited or a limit N), whatever its tier."""
    body: dict[str, Any] = {"value": parse_value(value), "reason": reason}
    ends = expiry(expires_at, lasting, datetime.now(UTC))
    if ends:
        body["expires_at"] = ends
    if actor:
        body["actor"] = actor
    stored = call_daemon("PUT", daemon_url, token, _path(tenant, feature), body)
    until = f" until {stored['expires_at']}" if stored.get("expires_at") else ""
    click.echo(f"{tenant}: {feature} = {json.dumps(stored['value'])}{until} ({stored['reason']})")


@overrides.command("rm")
@click.argument("tenant")
@click.argument("feature")
@click.option("--reason", default="removed", show_default=True)
@ACTOR_OPTION
@daemon_options
def overrides_rm(
    tenant: str, feature: str, reason: str, actor: str | None, daemon_url: str, token: str
) -> None:
    """Remove TENANT's override of FEATURE: the tier decides again."""
    query = {"reason": reason, **({"actor": actor} if actor else {})}
    call_daemon("DELETE", daemon_url, token, _path(tenant, feature) + "?" + urllib.parse.urlencode(query))
    click.echo(f"{tenant}: {feature} override removed")


@overrides.command("ls")
@click.argument("tenant")
@click.option("--audit", is_flag=True, help="Also print the newest audit entries.")
@daemon_options
def overrides_ls(tenant: str, audit: bool, daemon_url: str, token: str) -> None:
    """List TENANT's overrides (expired ones marked)."""
    listed = call_daemon("GET", daemon_url, token, _path(tenant))
    if not listed["overrides"]:
        click.echo(f"{tenant}: no overrides")
    for o in listed["overrides"]:
        until = f" until {o['expires_at']}" if o.get("expires_at") else ""
        state = "" if o["active"] else " [expired]"
        click.echo(
            f"{o['feature']} = {json.dumps(o['value'])}{until}{state}  # {o['reason']} ({o['actor'] or '-'})"
        )
    if audit:
        for entry in listed["audit"]:
            value = "" if entry["value"] is None else f" {json.dumps(entry['value'])}"
            click.echo(
                f"{entry['at']} {entry['action']} {entry['feature']}{value}: {entry['reason']} ({entry['actor'] or '-'})"
            )


def _path(tenant: str, feature: str | None = None) -> str:
    path = f"/v1/tenants/{urllib.parse.quote(tenant, safe='')}/overrides"
    return path + (f"/{urllib.parse.quote(feature, safe='')}" if feature else "")


def call_daemon(
    method: str,
    base: str,
    token: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """One request to the daemon; its error message, or why it could not be reached, exits 1."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:  # its body holds the connection open until closed
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
        click.echo(f"error: the daemon answered {exc.code}: {message}", err=True)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"error: cannot reach the daemon at {base}: {getattr(exc, 'reason', exc)}", err=True)
    sys.exit(1)
