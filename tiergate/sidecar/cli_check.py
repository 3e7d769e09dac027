"""`tiergate check TENANT FEATURE`: one decision from a running sidecar, over HTTP, for a person."""

from __future__ import annotations

import json
import sys
import urllib.parse

import click

from tiergate.cli_support import fetch

SIDECAR_URL = "http://127.0.0.1:9191"
DENIED_EXIT = 3  # a deny is an answer: scripts tell it from an error (1)


@click.command("check")
@click.argument("tenant")
@click.argument("feature")
@click.option("--quantity", default=1, show_default=True, type=click.IntRange(1, 1_000_000_000))
@click.option("--sidecar-url", envvar="TIERGATE_SIDECAR_URL", default=SIDECAR_URL, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar's JSON answer as it is.")
def check(tenant: str, feature: str, quantity: int, sidecar_url: str, as_json: bool) -> None:
    """Ask the sidecar whether TENANT may use FEATURE now (exit 0: allowed, 3: denied, 1: error)."""
    query = urllib.parse.urlencode({"tenant": tenant, "feature": feature, "quantity": quantity})
    decision = fetch(sidecar_url, f"/v1/check?{query}", None, "sidecar")
    click.echo(json.dumps(decision, indent=2) if as_json else render_decision(decision))
    if not decision["allow"]:
        sys.exit(DENIED_EXIT)


def render_decision(decision: dict[str, object]) -> str:
    verdict = "allow" if decision["allow"] else "deny"
    limit = "" if decision.get("limit") is None else f", used {decision['used']} of {decision['limit']}"
    paid = decision.get("paid_tier") or "none"
    return (
        f"{verdict}: {decision['reason']} (tier {decision['tier']}, paid {paid}{limit})\n"
        f"decision {decision['decision_id']} (tiergate explain {decision['decision_id']})"
    )
