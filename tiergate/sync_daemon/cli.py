"""The sync daemon's commands: `tiergate sync-daemon`, `sync`, `mirror copy`, `plans push`,
`usage resend` and `overrides`, added to the root command by `register`."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tiergate.catalog import load_catalog
from tiergate.cli import subgroup
from tiergate.cli_support import (
    COMMAND_VARIABLES,
    SETTINGS_FIELDS,
    SettingsHelp,
    one_line_errors,
    serve,
    warn_unknown_settings,
)
from tiergate.errors import TierError
from tiergate.sync_daemon.cli_credits import credits
from tiergate.sync_daemon.cli_overrides import overrides
from tiergate.sync_daemon.cli_support_tools import explain, tenant

if TYPE_CHECKING:
    from tiergate.sync_daemon.settings import DaemonSettings, UsageResendSettings


def register(root: click.Group) -> None:
    """Add the daemon's commands to ROOT (the `tiergate.commands` entry point)."""
    SETTINGS_FIELDS["sync_daemon"] = _settings_fields
    COMMAND_VARIABLES.add("actor")  # `overrides` and `credits` read TIERGATE_ACTOR
    root.add_command(sync_daemon_command)
    root.add_command(sync_command)
    root.add_command(mirror)
    root.add_command(overrides)
    root.add_command(credits)
    root.add_command(tenant)
    root.add_command(explain)
    subgroup(root, "plans").add_command(plans_push)
    subgroup(root, "usage").add_command(usage_resend)


def _settings_class() -> type[DaemonSettings]:
    from tiergate.sync_daemon.settings import DaemonSettings

    return DaemonSettings


def _settings_fields() -> list[str]:
    return list(_settings_class().model_fields)


@click.command("sync-daemon", cls=SettingsHelp, settings=_settings_class)
def sync_daemon_command() -> None:
    """Run the sync daemon: Stripe webhooks, reconciliation, the replica feed (settings below)."""
    from tiergate.sync_daemon.app import run

    settings = daemon_settings(warn=False)
    serve(lambda: run(settings), json=settings.log_json, level=settings.log_level, process="sync_daemon")


def daemon_settings(*, warn: bool = True) -> DaemonSettings:
    from tiergate.sync_daemon.settings import load_settings

    if warn:
        warn_unknown_settings("sync_daemon")
    try:
        return load_settings()
    except TierError as exc:
        if not warn:  # a misspelt variable is the likely cause: say so even for a server
            warn_unknown_settings("sync_daemon")
        click.echo(exc.message, err=True)
        sys.exit(2)


# -- plans push ----------------------------------------------------------------------------


@click.command("push")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--dry-run", is_flag=True, help="Print the plan of changes; change nothing in Stripe.")
def plans_push(path: Path | None, dry_run: bool) -> None:
    """Create or update the Stripe products and prices of PATH (idempotent, by lookup key).

    Without PATH, the catalog the daemon serves: TIERGATE_PLANS (default plans/plans.yaml).
    """
    from tiergate.sync_daemon.billing.stripe_catalog import run_push

    settings = daemon_settings()
    click.echo(
        f"{'planning' if dry_run else 'pushing'} catalog {path or settings.plans} "
        f"({_catalog_source(path)}) to {settings.stripe_base}"
    )
    path = path or settings.plans
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


def _catalog_source(path: Path | None) -> str:
    """Where the pushed catalog's path came from, as the first line of `plans push` says it."""
    if path is not None:
        return "from argument"
    if os.environ.get("TIERGATE_PLANS"):
        return "from TIERGATE_PLANS"
    return "the default: TIERGATE_PLANS is unset"


@click.command("sync")
@click.option("--full", is_flag=True, hidden=True, help="Accepted for older scripts: every sync is full.")
def sync_command(full: bool) -> None:
    """Reconcile the mirror with Stripe once: list every Stripe subscription and repair what the
    mirror holds, with a progress bar and a summary."""
    from tiergate.log import configure_logging
    from tiergate.sync_daemon.app import run_full_sync

    settings = daemon_settings()
    configure_logging(json=False, level="warning")
    with (
        one_line_errors(settings.log_level),
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


@click.group()
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
    from tiergate.sync_daemon.mirror.copy import copy_mirror

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


# -- usage resend --------------------------------------------------------------------------


@click.command("resend")
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
    from tiergate.sync_daemon.sinks.service import resend

    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        click.echo(f"error: --since {since!r} is not an RFC 3339 time with an offset", err=True)
        sys.exit(2)
    settings = _resend_settings()
    try:
        before, after = resend(settings.mirror_location, sink, moment)
    except TierError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"{sink}: cursor {before} -> {after}; {max(before - after, 0)} events will be sent again")
    off = settings.sink_off(sink)
    if off:
        click.echo(f"warning: {off}: nothing will be sent until it is, by a daemon that has it", err=True)


def _resend_settings() -> UsageResendSettings:
    """Only the mirror's location (and the sinks' switches): no Stripe key to rewind a cursor."""
    from tiergate.sync_daemon.settings import load_resend_settings

    warn_unknown_settings("sync_daemon")
    try:
        return load_resend_settings()
    except TierError as exc:
        click.echo(exc.message, err=True)
        sys.exit(2)
