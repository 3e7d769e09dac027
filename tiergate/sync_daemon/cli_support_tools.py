"""Support's commands against a running daemon or sidecar, over HTTP: `tiergate tenant show|search`,
`tiergate check TENANT FEATURE`, `tiergate explain DECISION_ID` (nothing of a server is imported)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import click

from tiergate.cli_support import fetch

DAEMON_URL = "http://127.0.0.1:9190"
SIDECAR_URL = "http://127.0.0.1:9191"


def _daemon_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON answer as it is.")(fn)
    fn = click.option("--daemon-url", envvar="TIERGATE_DAEMON_URL", default=DAEMON_URL, show_default=True)(fn)
    return click.option(
        "--token",
        envvar=["TIERGATE_CONSOLE_TOKEN", "TIERGATE_API_TOKEN"],
        help="or TIERGATE_CONSOLE_TOKEN / TIERGATE_API_TOKEN",
    )(fn)


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@click.group()
def tenant() -> None:
    """Look tenants up in the daemon (what support sees in the console)."""


@tenant.command("show")
@click.argument("name")
@_daemon_options
def tenant_show(name: str, token: str | None, daemon_url: str, as_json: bool) -> None:
    """NAME's account, what a sidecar would answer now, counters, overrides and recent changes."""
    view = fetch(daemon_url, f"/v1/tenants/{_quoted(name)}", token, "daemon")
    click.echo(json.dumps(view, indent=2) if as_json else render_tenant(view))


@tenant.command("search")
@click.argument("query")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 200))
@_daemon_options
def tenant_search(query: str, limit: int, token: str | None, daemon_url: str, as_json: bool) -> None:
    """Tenants whose id, Stripe customer id, subscription id or customer email starts with QUERY."""
    found = fetch(daemon_url, f"/v1/tenants?q={_quoted(query)}&limit={limit}", token, "daemon")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found["tenants"]:
        click.echo(f"no tenant matches {query!r}")
    for row in found["tenants"]:
        click.echo(
            f"{row['tenant']:<30} {row['tier'] or '-':<12} {row['status'] or '-':<10} "
            f"{row['stripe_customer_id'] or '-':<22} {row['subscription_id'] or '-':<22} "
            f"{', '.join(row.get('emails') or []) or '-'}"
        )


@click.command("explain")
@click.argument("decision_id")
@click.option(
    "--sidecar-url",
    envvar="TIERGATE_SIDECAR_URL",
    help="Read the record from this sidecar instead (its recent decisions; no lineage).",
)
@_daemon_options
def explain(
    decision_id: str, sidecar_url: str | None, token: str | None, daemon_url: str, as_json: bool
) -> None:
    """Why DECISION_ID answered as it did: its input, the Stripe event behind the account, and
    whether today's policy and state would answer the same."""
    if sidecar_url:
        record = fetch(sidecar_url, f"/v1/decisions/{_quoted(decision_id)}", None, "sidecar")
        click.echo(json.dumps(record, indent=2) if as_json else render_record(record))
        return
    explained = fetch(daemon_url, f"/v1/decisions/{_quoted(decision_id)}", token, "daemon")
    click.echo(json.dumps(explained, indent=2) if as_json else render_explanation(explained))


def render_tenant(view: dict[str, Any]) -> str:
    account = view["account"]
    lines = [f"tenant {view['tenant']}: tier {view['tier'] or '-'} (paid: {view['paid_tier'] or 'none'})"]
    if account is None:
        lines.append(
            "  no subscription: the default tier" + ("" if view["known"] else " (unknown to the mirror)")
        )
    else:
        period = account["period"]
        lines.append(
            f"  {account['status']}, {account['seats']} seats, {account['interval'] or '-'}ly, "
            f"period {period['start'] or '?'} .. {period['end'] or '?'}"
        )
        for label, key in (("trial ends", "trial_end"), ("past due since", "past_due_since")):
            if account[key]:
                lines.append(f"  {label} {account[key]}")
        if account["pending_change"]:
            change = account["pending_change"]
            lines.append(f"  pending: {change['tier']} from {change['at']}")
        lines.append(
            f"  customer {account['stripe_customer_id'] or '-'}, subscription {account['subscription_id'] or '-'}"
        )
    entitlements = view["entitlements"]
    if entitlements.get("error"):
        lines.append(f"  entitlements unavailable: {entitlements['error']}")
    for feature, answer in entitlements["features"].items():
        verdict = "allow" if answer["allow"] else "deny "
        limit = "" if answer["limit"] is None else f" {answer['used']}/{answer['limit']}"
        lines.append(f"  {verdict} {feature:<16} {answer['reason']:<22}{limit} [{answer['source']}]")
    for version in view["versions"][:5]:
        cause = version["event_id"] or version["cause"]
        lines.append(
            f"  v{version['version']} {version['at']} {version['cause']}: {cause} {version['event_type'] or ''}".rstrip()
        )
    return "\n".join(lines)


def render_record(record: dict[str, Any], decided_by: dict[str, Any] | None = None) -> str:
    decision = record["decision"]
    lines = [
        f"{record['decision_id']} at {record['at']}: {decision['tenant']} / {decision['feature']} -> "
        f"{'allow' if decision['allow'] else 'deny'} ({decision['reason']})",
        f"  tier {decision['tier']}, paid {decision.get('paid_tier') or 'none'}; policy {record['policy_revision']}, "
        f"replica position {record['replica']['position']}, account version {record['account_version']}",
    ]
    decided_by = decided_by or record.get("decided_by")
    if decided_by:
        rule = f"rule {decided_by['rule']}: " if decided_by.get("rule") else ""
        lines.append(f"  decided by {rule}{decided_by['text']}")
    lines.append("  input: " + json.dumps(record["input"], sort_keys=True))
    return "\n".join(lines)


def render_explanation(explained: dict[str, Any]) -> str:
    lines = [render_record(explained["record"], explained["today"].get("decided_by"))]
    lineage = explained["lineage"]
    event = lineage["stripe_event"]
    version = lineage["account_version"]
    if event:
        lines.append(
            f"  account v{version['version']} came from Stripe event {event['id']} ({event['type']}, {event['created']})"
        )
    elif version:
        lines.append(f"  account v{version['version']} came from {version['cause']} at {version['at']}")
    else:
        lines.append("  no account version on record (no subscription, or past retention)")
    for feature, override in lineage["overrides_in_force"].items():
        lines.append(f"  override in force: {feature} = {json.dumps(override['value'])}")
    for usage in lineage["usage_events"]:
        lines.append(f"  usage {usage['transaction_id']} {usage['timestamp']} +{usage['value']}")
    today = explained["today"]
    if today.get("error"):
        lines.append(f"  today: cannot evaluate ({today['error']})")
    else:
        lines.append(_today_line("same input, today's policy", today["same_input"]))
        lines.append(_today_line("today's state and policy", today["current_state"]))
    return "\n".join(lines)


def _today_line(label: str, answer: dict[str, Any]) -> str:
    same = "the same" if answer["same"] else "DIFFERENT"
    verdict = "allow" if answer["allow"] else "deny"
    return f"  {label}: {verdict} ({answer['reason']}): {same}"
