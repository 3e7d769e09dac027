"""`tiergate credits grant|ls|ledger|void`: tenants' credits through the daemon's API (TIERGATE_API_TOKEN)."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Any

import click

from tiergate.sync_daemon.cli_overrides import ACTOR_OPTION, call_daemon, daemon_options, expiry


@click.group()
def credits() -> None:
    """Tenants' credit balances, grants and ledger (the daemon's /v1/tenants/{tenant}/credits)."""


@credits.command("grant")
@click.argument("tenant")
@click.argument("credit_type")
@click.argument("amount")
@click.option("--reason", required=True, help="Why: kept with the grant.")
@click.option(
    "--category", type=click.Choice(["promotional", "paid"]), default="promotional", show_default=True
)
@click.option(
    "--priority", type=click.IntRange(0, 100), default=50, show_default=True, help="Lower spends first."
)
@click.option("--expires-at", help="RFC 3339 time the grant expires, e.g. 2026-12-31T00:00:00Z.")
@click.option("--for", "lasting", help="How long it lasts from now: 30m, 12h, 14d, 2w.")
@click.option("--idempotency-key", help="Makes a retry of this command grant once.")
@ACTOR_OPTION
@daemon_options
def credits_grant(
    tenant: str,
    credit_type: str,
    amount: str,
    reason: str,
    category: str,
    priority: int,
    expires_at: str | None,
    lasting: str | None,
    idempotency_key: str | None,
    actor: str | None,
    daemon_url: str,
    token: str,
) -> None:
    """Grant TENANT AMOUNT credits of CREDIT_TYPE (exact: 10, 2.5)."""
    body: dict[str, Any] = {
        "credit_type": credit_type,
        "amount": amount.strip(),
        "category": category,
        "priority": priority,
        "reason": reason,
    }
    ends = expiry(expires_at, lasting, datetime.now(UTC))
    if ends:
        body["expires_at"] = ends
    if actor:
        body["actor"] = actor
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    answer = call_daemon("POST", daemon_url, token, _path(tenant, "grants"), body, headers)
    grant = answer["grant"]
    until = f" until {grant['expires_at']}" if grant.get("expires_at") else ""
    click.echo(
        f"{tenant}: granted {grant['amount']} {credit_type} ({grant['id']}){until}; balance {answer['balance']}"
    )


@credits.command("ls")
@click.argument("tenant")
@daemon_options
def credits_ls(tenant: str, daemon_url: str, token: str) -> None:
    """TENANT's balances and the grants behind them."""
    listed = call_daemon("GET", daemon_url, token, _path(tenant))
    if not listed["credits"]:
        click.echo(f"{tenant}: no credits")
    for kind in listed["credits"]:
        expiring = f", next expiry {kind['next_expiry']}" if kind.get("next_expiry") else ""
        debt = f", debt {kind['debt']}" if kind.get("debt") not in (0, "0") else ""
        click.echo(f"{kind['credit_type']}: {kind['balance']}{debt}{expiring}")
        for g in kind["grants"]:
            until = f" until {g['expires_at']}" if g.get("expires_at") else ""
            click.echo(
                f"  {g['id']} {g['remaining']}/{g['amount']} {g['category']} p{g['priority']} {g['source']}{until}"
                f"  # {g['reason'] or '-'}"
            )


@credits.command("ledger")
@click.argument("tenant")
@click.option("--after", type=click.IntRange(0), default=0, help="Start after this entry id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@daemon_options
def credits_ledger(tenant: str, after: int, limit: int, daemon_url: str, token: str) -> None:
    """TENANT's ledger entries, oldest first (one page; the next page's --after is printed)."""
    query = urllib.parse.urlencode({"after": after, "limit": limit})
    page = call_daemon("GET", daemon_url, token, _path(tenant, "ledger") + "?" + query)
    for e in page["entries"]:
        grant = e["grant_id"] or "-"
        tx = f" tx={e['transaction_id']}" if e.get("transaction_id") else ""
        click.echo(f"{e['id']} {e['at']} {e['kind']} {e['amount']} {e['credit_type']} {grant}{tx}")
    if page["next_after"] is not None:
        click.echo(f"# more: --after {page['next_after']}")


@credits.command("void")
@click.argument("tenant")
@click.argument("grant_id")
@click.option("--reason", default="voided", show_default=True)
@ACTOR_OPTION
@daemon_options
def credits_void(
    tenant: str, grant_id: str, reason: str, actor: str | None, daemon_url: str, token: str
) -> None:
    """Void what is left of TENANT's grant GRANT_ID (what was spent stays spent)."""
    body = {"reason": reason, **({"actor": actor} if actor else {})}
    path = _path(tenant, "grants") + f"/{urllib.parse.quote(grant_id, safe='')}/void"
    answer = call_daemon("POST", daemon_url, token, path, body)
    click.echo(f"{tenant}: {grant_id} voided {answer['voided']}")


def _path(tenant: str, tail: str | None = None) -> str:
    path = f"/v1/tenants/{urllib.parse.quote(tenant, safe='')}/credits"
    return path + (f"/{tail}" if tail else "")
