"""The sidecar's commands: `tiergate sidecar`, `policies test`, `replica import|export`, `plans diff`,
`usage quarantine|redeliver` and `healthcheck`, added to the root command by `register` (with
`license ...` and `usage export` from cli_license)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TextIO

import click
from pydantic import ValidationError

from tiergate.catalog import Catalog, load_catalog
from tiergate.cli import subgroup
from tiergate.cli_support import SETTINGS_FIELDS, SettingsHelp, serve, warn_unknown_settings
from tiergate.errors import CatalogError, TierError
from tiergate.settings_errors import describe_settings_error
from tiergate.sidecar.cli_check import check
from tiergate.sidecar.cli_license import register_license_commands
from tiergate.sidecar.decisions.impact_report import (
    FAIL_ON,
    needs_impact,
    parse_fail_on,
    price_lines,
    render_table,
    tripped,
)

if TYPE_CHECKING:
    from tiergate.policy.engine import PolicyBundle
    from tiergate.sidecar.settings import SidecarSettings


def register(root: click.Group) -> None:
    """Add the sidecar's commands to ROOT (the `tiergate.commands` entry point)."""
    SETTINGS_FIELDS["sidecar"] = _settings_fields
    root.add_command(sidecar_command)
    root.add_command(policies)
    root.add_command(replica)
    root.add_command(healthcheck)
    root.add_command(check)
    subgroup(root, "plans").add_command(plans_diff)
    subgroup(root, "usage").add_command(usage_quarantine)
    subgroup(root, "usage").add_command(usage_redeliver)
    register_license_commands(root, subgroup(root, "usage"))


def _settings_class() -> type[SidecarSettings]:
    from tiergate.sidecar.settings import SidecarSettings

    return SidecarSettings


def _settings_fields() -> list[str]:
    return list(_settings_class().model_fields)


@click.command("sidecar", cls=SettingsHelp, settings=_settings_class)
def sidecar_command() -> None:
    """Run the sidecar: entitlement checks on 127.0.0.1 from its replica (settings below)."""
    from tiergate.sidecar.app import run

    settings = sidecar_settings(warn=False)
    serve(lambda: run(settings), json=settings.log_json, level=settings.log_level, process="sidecar")


def sidecar_settings(*, warn: bool = True) -> SidecarSettings:
    from tiergate.sidecar.settings import SidecarSettings

    if warn:
        warn_unknown_settings("sidecar")
    try:
        return SidecarSettings()
    except ValidationError as exc:
        if not warn:
            warn_unknown_settings("sidecar")
        click.echo(describe_settings_error(exc), err=True)
        sys.exit(2)


# -- plans diff ----------------------------------------------------------------------------


@click.command("diff")
@click.argument("candidate", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--current",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="TIERGATE_PLANS",
    show_envvar=True,
    default=Path("plans/plans.yaml"),
    show_default=True,
    help="The live catalog.",
)
@click.option(
    "--policies",
    "candidate_policies",
    type=click.Path(path_type=Path, file_okay=False),
    help="Candidate policy directory (default: the live one).",
)
@click.option(
    "--current-policies",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="TIERGATE_POLICIES",
    show_envvar=True,
    default=Path("policies"),
    show_default=True,
    help="The live policy directory.",
)
@click.option("--impact", is_flag=True, help="Evaluate both against every tenant of the replica.")
@click.option(
    "--replica",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Replica to read (default: TIERGATE_REPLICA_PATH).",
)
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: one per CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for CI).")
@click.option(
    "--fail-on",
    "fail_on_text",
    metavar="KINDS",
    help="Exit 3 when the diff finds any of these (comma-separated): "
    + "; ".join(f"{kind}: {what}" for kind, what in FAIL_ON.items())
    + ". All but price need --impact.",
)
def plans_diff(
    candidate: Path,
    current: Path,
    candidate_policies: Path | None,
    current_policies: Path,
    impact: bool,
    replica: Path | None,
    workers: int | None,
    as_json: bool,
    fail_on_text: str | None,
) -> None:
    """What CANDIDATE (a catalog, with --policies a policy directory too) changes: prices, and
    with --impact who gains or loses each feature, who is over a new limit at current usage (or
    short of credits at a new price), whose credit price or plan grants of credits change.

    Exit codes: 0 done, 1 an error, 2 a bad option, 3 a --fail-on change was found."""
    from tiergate.catalog_diff import price_changes
    from tiergate.policy.bundle import load_bundle

    fail_on = _fail_on(fail_on_text, impact)
    try:
        live = load_bundle(current_policies, current)
        trial = load_bundle(candidate_policies or current_policies, candidate)
        if impact:
            _impact_diff(live, trial, replica or sidecar_settings().replica_path, workers, as_json, fail_on)
            return
    except TierError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    prices = price_changes(live.catalog, trial.catalog, {})
    if as_json:
        click.echo(json.dumps({"prices": [p.__dict__ for p in prices]}, indent=2))
    else:
        click.echo("\n".join(price_lines(prices, with_tenants=False)))
        if not prices:
            click.echo("(add --impact to evaluate every tenant of the replica)")
    _gate(fail_on, {}, len(prices))


def _fail_on(text: str | None, impact: bool) -> tuple[str, ...]:
    if text is None:
        return ()
    try:
        kinds = parse_fail_on(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fail-on") from None
    if not impact and "any" not in text and needs_impact(kinds):
        raise click.UsageError(f"--fail-on {','.join(needs_impact(kinds))} needs --impact")
    return kinds if impact else tuple(k for k in kinds if k == "price")


def _impact_diff(
    live: PolicyBundle,
    trial: PolicyBundle,
    replica_path: Path,
    workers: int | None,
    as_json: bool,
    fail_on: tuple[str, ...],
) -> None:
    from tiergate.sidecar.decisions.impact import run_impact

    report = run_impact(replica_path, live, trial, workers=workers)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else render_table(report))
    _gate(fail_on, report.totals(), len(report.prices))


def _gate(fail_on: tuple[str, ...], totals: Mapping[str, int], prices: int) -> None:
    found = tripped(fail_on, totals, prices)
    if found:
        click.echo(f"fail-on: {'; '.join(found)}", err=True)
        sys.exit(3)


# -- policies ------------------------------------------------------------------------------


@click.group()
def policies() -> None:
    """The Rego tier policies (policies/)."""


@policies.command("test")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=Path("policies"))
@click.option(
    "--engine",
    type=click.Choice(["embedded", "opa-reference"]),
    default="embedded",
    show_default=True,
    help="embedded: the sidecar's regorus engine; opa-reference: the real OPA Go library (dev tool).",
)
def policies_test(directory: Path, engine: Literal["embedded", "opa-reference"]) -> None:
    """Run every test_ rule in DIRECTORY's *.rego files."""
    from tiergate.sidecar.policy.rego_tests import render_report, run_policy_tests

    text, code = render_report(run_policy_tests(directory, engine))
    click.echo(f"[{engine}]")
    click.echo(text)
    sys.exit(code)


# -- replica -------------------------------------------------------------------------------


@click.group()
def replica() -> None:
    """The sidecar's local replica (TIERGATE_REPLICA_PATH): import, export."""


@replica.command("import")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--allow-unknown",
    is_flag=True,
    help="Import accounts on tiers, and counters for codes, that the catalog (TIERGATE_PLANS) lacks.",
)
def replica_import(file: BinaryIO, allow_unknown: bool) -> None:
    """Replace the replica's content with FILE (JSON; '-' reads stdin), atomically.

    Every tier and usage code must be in the catalog (TIERGATE_PLANS) unless --allow-unknown.
    """
    from tiergate.sidecar.replica.import_check import unknown_to_catalog
    from tiergate.sidecar.replica.store import ReplicaWriter, open_replica, parse_replica_document

    settings = sidecar_settings()
    try:
        document = parse_replica_document(file.read(), source=file.name)
        catalog = _catalog(settings.plans)
        unknown = unknown_to_catalog(document, catalog)
        if unknown and not allow_unknown:
            for line in unknown.describe(catalog):
                click.echo(f"error: {file.name}: {line}", err=True)
            click.echo(
                f"nothing imported: fix the document or TIERGATE_PLANS ({settings.plans}), "
                "or pass --allow-unknown",
                err=True,
            )
            sys.exit(1)
        db = open_replica(settings.replica_path)
        as_of = document.data_as_of or datetime.now(UTC)
        n_accounts, n_usage = ReplicaWriter(db).replace_all(
            document.accounts,
            document.usage,
            data_as_of=as_of,
            overrides=document.overrides,
            credits=document.credits,
        )
        db.close()
    except TierError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"imported {n_accounts} accounts and {n_usage} usage counters into {settings.replica_path}")
    for line in unknown.describe(catalog):
        click.echo(f"warning: imported anyway (--allow-unknown): {line}", err=True)


def _catalog(path: Path) -> Catalog:
    try:
        return load_catalog(path)
    except CatalogError as exc:
        raise CatalogError(f"TIERGATE_PLANS={str(path)!r}: {exc.message}") from None


@replica.command("export")
@click.argument("file", type=click.File("w"), default="-")
def replica_export(file: TextIO) -> None:
    """Write the replica's content to FILE as JSON ('-' for stdout); exit 1 when there is none."""
    from tiergate.sidecar.replica.store import ReplicaWriter, open_replica, read_meta

    settings = sidecar_settings()
    path = settings.replica_path
    if not path.exists():
        click.echo(f"error: no replica at {path} (TIERGATE_REPLICA_PATH): nothing to export", err=True)
        sys.exit(1)
    db = open_replica(path)
    try:
        if read_meta(db.conn).data_as_of is None:
            click.echo(
                f"error: the replica at {path} (TIERGATE_REPLICA_PATH) was never imported into "
                "nor synced from a daemon: nothing to export",
                err=True,
            )
            sys.exit(1)
        json.dump(ReplicaWriter(db).export(), file, indent=1)
        file.write("\n")
    finally:
        db.close()


# -- usage quarantine, healthcheck: calls to a running sidecar -------------------------------


_SIDECAR_URL = click.option(
    "--url", help="The sidecar's base URL (default: from TIERGATE_SIDECAR_HOST and TIERGATE_SIDECAR_PORT)."
)


@click.command("quarantine")
@_SIDECAR_URL
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
def usage_quarantine(url: str | None, limit: int) -> None:
    """List the events no delivery could carry (kept in the outbox, never counted)."""
    answer = _sidecar_call(url, f"/v1/usage/quarantine?limit={limit}")
    for event in answer["events"]:
        click.echo(
            f"{event['id']}\t{event['tenant']}\t{event['transaction_id']}\t{event['code']}\t"
            f"{event['bytes']} bytes\t{event['error']}"
        )
    click.echo(f"{answer['quarantined']} quarantined", err=True)


@click.command("redeliver")
@_SIDECAR_URL
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "everything", is_flag=True, help="Every quarantined event.")
def usage_redeliver(url: str | None, ids: tuple[int, ...], everything: bool) -> None:
    """Put quarantined events (IDS from `tiergate usage quarantine`, or --all) back in line."""
    if everything == bool(ids):
        click.echo("error: give quarantined event ids or --all (not both)", err=True)
        sys.exit(2)
    body = {"all": True} if everything else {"ids": list(ids)}
    answer = _sidecar_call(url, "/v1/usage/quarantine/redeliver", body)
    click.echo(f"{answer['redelivered']} events back in line; {answer['quarantined']} still quarantined")


def _sidecar_call(url: str | None, path: str, body: object = None) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    if url is None:
        settings = sidecar_settings()
        url = f"http://{settings.sidecar_host}:{settings.sidecar_port}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url.rstrip("/") + path, data=data, method="GET" if data is None else "POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        click.echo(
            f"error: {url}{path} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}", err=True
        )
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"error: cannot reach the sidecar at {url}: {exc}", err=True)
        sys.exit(1)
    return answer


@click.command("healthcheck")
@_SIDECAR_URL
@click.option("--ready", is_flag=True, help="Readiness (/readyz) instead of liveness (/healthz).")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True)
def healthcheck(url: str | None, ready: bool, timeout: float) -> None:
    """Exit 0 when the sidecar answers 200 on /healthz (or /readyz), else 1: for exec probes and
    container HEALTHCHECKs that cannot reach an HTTP port."""
    import urllib.error
    import urllib.request

    if url is None:
        settings = sidecar_settings()
        url = f"http://{settings.sidecar_host}:{settings.sidecar_port}"
    target = url.rstrip("/") + ("/readyz" if ready else "/healthz")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: cannot reach {target}: {exc}", err=True)
        sys.exit(1)
    if status != 200:
        click.echo(f"unhealthy: {target} answered {status}", err=True)
        sys.exit(1)
    click.echo(f"ok: {target}")
