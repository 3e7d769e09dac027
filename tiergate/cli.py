"""The `tiergate` command line: plans, policies, replica, and the two servers.

This is the composition root: the one module of the core that imports the server packages
(lazily, per command), so `tiergate plans check` never loads aiohttp.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TextIO

import click
from pydantic import ValidationError

from tiergate.catalog import Catalog, load_catalog
from tiergate.cli_overrides import overrides
from tiergate.errors import CatalogError, TierError
from tiergate.settings_errors import describe_settings_error, unknown_settings

if TYPE_CHECKING:
    from sidecar.settings import SidecarSettings
    from sync_daemon.settings import DaemonSettings


@click.group()
@click.version_option(package_name="tiergate")
def main() -> None:
    """tiergate: Stripe billing turned into fast, local allow/deny answers."""


# -- plans ---------------------------------------------------------------------------------


@main.group()
def plans() -> None:
    """The tier catalog (plans/plans.yaml)."""


@plans.command("check")
@click.argument("path", type=click.Path(path_type=Path), required=False)
def plans_check(path: Path | None) -> None:
    """Validate a catalog (default: TIERGATE_PLANS, else plans/plans.yaml); print every problem."""
    path = path or Path(os.environ.get("TIERGATE_PLANS") or "plans/plans.yaml")
    try:
        catalog = load_catalog(path)
    except CatalogError as exc:
        click.echo(f"{path}: invalid", err=True)
        for field, message in exc.problems or [("", exc.message)]:
            click.echo(f"  {field or '<root>'}: {message}", err=True)
        sys.exit(1)
    click.echo(
        f"{path}: ok ({len(catalog.tiers)} tiers, {len(catalog.features)} features, "
        f"{len(catalog.metrics)} metrics, {len(catalog.routes)} routes; default tier {catalog.default_tier!r})"
    )


@plans.command("push")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--dry-run", is_flag=True, help="Print the plan of changes; change nothing in Stripe.")
def plans_push(path: Path | None, dry_run: bool) -> None:
    """Create or update the Stripe products and prices of PATH (idempotent, by lookup key).

    Without PATH, the catalog the daemon serves: TIERGATE_PLANS (default plans/plans.yaml).
    """
    from sync_daemon.billing.stripe_catalog import run_push

    settings = _daemon_settings()
    source = "argument" if path else "TIERGATE_PLANS"
    path = path or settings.plans
    click.echo(
        f"{'planning' if dry_run else 'pushing'} catalog {path} (from {source}) to {settings.stripe_base}"
    )
    try:
        changes, result, legacy = run_push(settings, load_catalog(path), dry_run=dry_run)
    except TierError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    if legacy:
        click.echo(f"note: {settings.stripe_base} has no Prices API; using Plans whose id is the lookup key")
    for change in changes:
        click.echo(("would " if dry_run else "") + change.describe())
    if not changes:
        click.echo("nothing to change: Stripe already holds the catalog")
    elif not dry_run:
        click.echo(f"{len(result.done)} changes made, {len(result.skipped)} skipped")


@plans.command("diff")
@click.argument("candidate", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--current",
    type=click.Path(path_type=Path, dir_okay=False),
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
def plans_diff(
    candidate: Path,
    current: Path,
    candidate_policies: Path | None,
    current_policies: Path,
    impact: bool,
    replica: Path | None,
    workers: int | None,
    as_json: bool,
) -> None:
    """What CANDIDATE (a catalog, with --policies a policy directory too) changes: prices, and
    with --impact who gains or loses each feature and who is over a new limit at current usage."""
    import json as json_module

    from sidecar.impact import price_changes, render_table, run_impact
    from sidecar.policy.bundle import load_bundle

    try:
        live = load_bundle(current_policies, current)
        trial = load_bundle(candidate_policies or current_policies, candidate)
        if impact:
            path = replica or _sidecar_settings().replica_path
            report = run_impact(path, live, trial, workers=workers)
            click.echo(json_module.dumps(report.to_json(), indent=2) if as_json else render_table(report))
            return
    except TierError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    prices = price_changes(live.catalog, trial.catalog, {})
    if as_json:
        click.echo(json_module.dumps({"prices": [p.__dict__ for p in prices]}, indent=2))
        return
    for change in prices:
        click.echo(f"price {change.tier}/{change.interval}: {change.current} -> {change.candidate}")
    if not prices:
        click.echo("prices: unchanged (add --impact to evaluate every tenant of the replica)")


# -- policies ------------------------------------------------------------------------------


@main.group()
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
    from sidecar.policy.rego_tests import render_report, run_policy_tests

    text, code = render_report(run_policy_tests(directory, engine))
    click.echo(f"[{engine}]")
    click.echo(text)
    sys.exit(code)


# -- replica -------------------------------------------------------------------------------


@main.group()
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
    from sidecar.replica.import_check import unknown_to_catalog
    from sidecar.replica.store import ReplicaWriter, open_replica, parse_replica_document

    settings = _sidecar_settings()
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
            document.accounts, document.usage, data_as_of=as_of, overrides=document.overrides
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
    import json

    from sidecar.replica.store import ReplicaWriter, open_replica, read_meta

    settings = _sidecar_settings()
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


# -- servers -------------------------------------------------------------------------------


@main.command("sidecar")
def sidecar_command() -> None:
    """Run the sidecar (settings from TIERGATE_* variables)."""
    from sidecar.app import run

    settings = _sidecar_settings(warn=False)
    _serve(lambda: run(settings), json=settings.log_json, level=settings.log_level, process="sidecar")


@main.command("sync-daemon")
def sync_daemon_command() -> None:
    """Run the sync daemon: Stripe webhooks, reconciliation, the replica feed."""
    from sync_daemon.app import run

    settings = _daemon_settings(warn=False)
    _serve(lambda: run(settings), json=settings.log_json, level=settings.log_level, process="sync_daemon")


def _serve(run: Callable[[], None], *, json: bool, level: str, process: str) -> None:
    """Run a server until interrupted; a start-up failure is one line and exit code 1, with a
    traceback only at TIERGATE_LOG_LEVEL=debug."""
    import structlog

    from tiergate.log import configure_logging

    configure_logging(json=json, level=level)
    log = structlog.get_logger("tiergate.cli")
    for variable, closest in _unknown_settings(process):
        log.warning("unknown_setting", variable=variable, did_you_mean=closest)
    with _one_line_errors(level):
        run()


@contextlib.contextmanager
def _one_line_errors(level: str) -> Iterator[None]:
    """A failure is one line and exit code 1, with a traceback only at TIERGATE_LOG_LEVEL=debug."""
    try:
        yield
    except Exception as exc:
        if level == "debug":
            raise
        if isinstance(exc, TierError):
            click.echo(f"error: {exc.message}", err=True)
        else:
            click.echo(f"error: {type(exc).__name__}: {exc} (TIERGATE_LOG_LEVEL=debug shows where)", err=True)
        sys.exit(1)


def _unknown_settings(process: str) -> list[tuple[str, str | None]]:
    from sidecar.settings import SidecarSettings
    from sync_daemon.settings import DaemonSettings

    sidecar, daemon = list(SidecarSettings.model_fields), list(DaemonSettings.model_fields)
    own, other = (sidecar, daemon) if process == "sidecar" else (daemon, sidecar)
    return unknown_settings(os.environ, own, other)


def _warn_unknown_settings(process: str) -> None:
    for variable, closest in _unknown_settings(process):
        hint = f"; did you mean {closest}?" if closest else ""
        click.echo(f"warning: {variable} is not a tiergate setting and is ignored{hint}", err=True)


@main.command("sync")
@click.option(
    "--full", is_flag=True, required=True, help="List every Stripe subscription and repair the mirror."
)
def sync_command(full: bool) -> None:
    """Reconcile the mirror with Stripe once, with a progress bar and a summary."""
    from sync_daemon.app import run_full_sync
    from tiergate.log import configure_logging

    settings = _daemon_settings()
    configure_logging(json=False, level="warning")
    with (
        _one_line_errors(settings.log_level),
        click.progressbar(length=0, label="subscriptions", show_pos=True, show_percent=False) as bar,
    ):
        summary = run_full_sync(settings, progress=bar.update)
    click.echo(
        f"{'ok' if summary.ok else 'FAILED'}: {summary.subscriptions} subscriptions listed, "
        f"{summary.repairs} repairs, {summary.no_tenant} without a tenant"
    )
    for field, count in sorted(summary.drift.items()):
        click.echo(f"  drift in {field}: {count}")
    if not summary.ok:
        click.echo(f"error: {summary.error}", err=True)
        sys.exit(1)


# -- mirror --------------------------------------------------------------------------------


@main.group()
def mirror() -> None:
    """The sync daemon's mirror (SQLite file or PostgreSQL database)."""


@mirror.command("copy")
@click.option("--from", "source", required=True, help="The mirror to read: sqlite:PATH or postgresql://…")
@click.option("--to", "target", required=True, help="The mirror to fill: sqlite:PATH or postgresql://…")
@click.option("--force", is_flag=True, help="Replace what the target holds (refused otherwise).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def mirror_copy(source: str, target: str, force: bool, batch_size: int) -> None:
    """Copy every table and feed position between backends, verified by counts and checksums.

    One transaction on the target: a copy that fails or is killed leaves the target as it was.
    Stop the daemons first (a write after the copy's snapshot is not copied).
    """
    from sync_daemon.mirror.copy import copy_mirror

    with _copy_progress() as progress:
        try:
            report = copy_mirror(source, target, force=force, batch_size=batch_size, progress=progress)
        except TierError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
    for line in report.lines():
        click.echo(line)
    replaced = f" (replaced {sum(report.replaced.values())} rows it held)" if report.replaced else ""
    click.echo(f"verified: {report.rows} rows copied from {report.source} to {report.target}{replaced}")


class _CopyProgress:
    """A progress bar on a terminal, else a line per table and at most one a second."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.bar: Any = None
        self._last_line = 0.0

    def start(self, totals: dict[str, int]) -> None:
        self.totals = totals
        self.done = dict.fromkeys(totals, 0)
        if self.tty:
            self.bar = click.progressbar(length=sum(totals.values()), label="copying", show_pos=True)
            self.bar.__enter__()
        else:
            click.echo(f"copying {sum(totals.values())} rows in {len(totals)} tables")

    def advance(self, table: str, rows: int) -> None:
        self.done[table] += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        first, last = self.done[table] == rows, self.done[table] == self.totals[table]
        if first or last or now - self._last_line >= 1.0:
            self._last_line = now
            copied = sum(self.done.values())
            click.echo(
                f"  {table}: {self.done[table]}/{self.totals[table]} rows "
                f"(all tables {copied}/{sum(self.totals.values())})"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextlib.contextmanager
def _copy_progress() -> Iterator[_CopyProgress]:
    progress = _CopyProgress(sys.stdout.isatty())
    try:
        yield progress
    finally:
        progress.close()


# -- usage ---------------------------------------------------------------------------------


@main.group()
def usage() -> None:
    """Usage events: stored by the sync daemon (resend), quarantined by a sidecar's delivery."""


@usage.command("resend")
@click.option(
    "--sink",
    "sink",
    type=click.Choice(["lago", "stripe_meters"]),
    required=True,
    help="Which sink sends again.",
)
@click.option(
    "--since",
    required=True,
    help="RFC 3339 time (e.g. 2026-11-01T00:00:00Z): every event the daemon ingested at or after it.",
)
def usage_resend(sink: str, since: str) -> None:
    """Send stored events to a sink again (the sinks de-duplicate by transaction id)."""
    from sync_daemon.sinks.service import resend

    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        click.echo(f"error: --since {since!r} is not an RFC 3339 time with an offset", err=True)
        sys.exit(2)
    settings = _daemon_settings()
    try:
        before, after = resend(settings.mirror_location, sink, moment)
    except TierError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"{sink}: cursor {before} -> {after}; {max(before - after, 0)} events will be sent again")


_SIDECAR_URL = click.option(
    "--url", help="The sidecar's base URL (default: from TIERGATE_SIDECAR_HOST and TIERGATE_SIDECAR_PORT)."
)


@usage.command("quarantine")
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


@usage.command("redeliver")
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
    import json
    import urllib.error
    import urllib.request

    if url is None:
        settings = _sidecar_settings()
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


@main.command("healthcheck")
@_SIDECAR_URL
@click.option("--ready", is_flag=True, help="Readiness (/readyz) instead of liveness (/healthz).")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True)
def healthcheck(url: str | None, ready: bool, timeout: float) -> None:
    """Exit 0 when the sidecar answers 200 on /healthz (or /readyz), else 1: for exec probes and
    container HEALTHCHECKs that cannot reach an HTTP port."""
    import urllib.error
    import urllib.request

    if url is None:
        settings = _sidecar_settings()
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


main.add_command(overrides)


def _daemon_settings(*, warn: bool = True) -> DaemonSettings:
    from sync_daemon.settings import load_settings

    if warn:
        _warn_unknown_settings("sync_daemon")
    try:
        return load_settings()
    except TierError as exc:
        if not warn:  # a misspelt variable is the likely cause: say so even for a server
            _warn_unknown_settings("sync_daemon")
        click.echo(exc.message, err=True)
        sys.exit(2)


def _sidecar_settings(*, warn: bool = True) -> SidecarSettings:
    from sidecar.settings import SidecarSettings

    if warn:
        _warn_unknown_settings("sidecar")
    try:
        return SidecarSettings()
    except ValidationError as exc:
        if not warn:
            _warn_unknown_settings("sidecar")
        click.echo(describe_settings_error(exc), err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
