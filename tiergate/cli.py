"""The `tiergate` command line: the entry point that assembles the commands each process defines.

The core imports no process. `tiergate.sidecar.cli` and `tiergate.sync_daemon.cli` each add their
commands through a `tiergate.commands` entry point (pyproject.toml), loaded the first time a command
is looked up, so `tiergate plans check` never loads aiohttp. Groups that span both processes
(`plans`, `usage`) are made here; each process adds its own subcommands to them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import click

from tiergate.catalog import load_catalog
from tiergate.errors import CatalogError

COMMANDS_GROUP = "tiergate.commands"


class AssembledGroup(click.Group):
    """The root group: every process's commands, added by its entry point on first use."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # click's own signature
        self._assembled = False

    def assemble(self) -> None:
        if self._assembled:
            return
        self._assembled = True
        for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
            register: Callable[[click.Group], None] = entry.load()
            register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.assemble()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self.assemble()
        return super().get_command(ctx, cmd_name)


@click.group(cls=AssembledGroup)
@click.version_option(package_name="tiergate")
def main() -> None:
    """tiergate: Stripe billing turned into fast, local allow/deny answers."""


def subgroup(root: click.Group, name: str) -> click.Group:
    """The group NAME of the root command, for a process to add its subcommands to."""
    group = root.commands[name]
    assert isinstance(group, click.Group), f"{name} is a command, not a group"
    return group


# -- plans: the catalog both processes read --------------------------------------------------


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
    sold = f", {len(catalog.credits)} credit types, {len(catalog.packs)} packs" if catalog.credits else ""
    click.echo(
        f"{path}: ok ({len(catalog.tiers)} tiers, {len(catalog.features)} features, "
        f"{len(catalog.metrics)} metrics, {len(catalog.routes)} routes{sold}; default tier {catalog.default_tier!r})"
    )


@main.group()
def usage() -> None:
    """Usage events: stored by the sync daemon (resend), quarantined by a sidecar's delivery."""


if __name__ == "__main__":
    main()
