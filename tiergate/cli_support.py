"""What every process's commands share: serving with one-line start-up errors, a `--help` that lists
the settings, and the warning for a TIERGATE_* variable that no process reads (each process
registers its settings' fields here)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import click

from tiergate.errors import TierError
from tiergate.settings_errors import unknown_settings

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

OPERATOR_GUIDE = "docs/operator.md"

# process name -> its settings' field names; filled by each process's `register` (tiergate.cli).
SETTINGS_FIELDS: dict[str, Callable[[], Iterable[str]]] = {}
# TIERGATE_* variables only commands read (TIERGATE_ACTOR for `overrides`): no process warns of them.
COMMAND_VARIABLES: set[str] = set()


def serve(run: Callable[[], None], *, json: bool, level: str, process: str) -> None:
    """Run a server until interrupted; a start-up failure is one line and exit code 1, with a
    traceback only at TIERGATE_LOG_LEVEL=debug."""
    import structlog

    from tiergate.log import configure_logging

    configure_logging(json=json, level=level)
    log = structlog.get_logger("tiergate.cli")
    for variable, closest in unknown_settings_of(process):
        log.warning("unknown_setting", variable=variable, did_you_mean=closest)
    with one_line_errors(level):
        run()


@contextlib.contextmanager
def one_line_errors(level: str) -> Iterator[None]:
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


def unknown_settings_of(process: str) -> list[tuple[str, str | None]]:
    """TIERGATE_* variables PROCESS does not read, each with the closest setting (or the other
    process's, when it is one of those)."""
    own = list(SETTINGS_FIELDS[process]())
    other = [field for name, fields in SETTINGS_FIELDS.items() if name != process for field in fields()]
    other += sorted(COMMAND_VARIABLES)
    return unknown_settings(os.environ, own, other)


def warn_unknown_settings(process: str) -> None:
    for variable, closest in unknown_settings_of(process):
        hint = f"; did you mean {closest}?" if closest else ""
        click.echo(f"warning: {variable} is not a tiergate setting and is ignored{hint}", err=True)


class SettingsHelp(click.Command):
    """A process's command whose `--help` ends with every TIERGATE_* setting it reads and its default."""

    def __init__(self, *args: Any, settings: Callable[[], type[BaseModel]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section(f"Settings (environment variables; {OPERATOR_GUIDE} says what each means)"):
            formatter.write_dl(settings_rows(self.settings()), col_max=48)


def settings_rows(settings: type[BaseModel]) -> list[tuple[str, str]]:
    """(TIERGATE_NAME, its default) for every field of a settings class, in declaration order."""
    return [
        (f"TIERGATE_{name.upper()}", describe_default(info)) for name, info in settings.model_fields.items()
    ]


def describe_default(info: FieldInfo) -> str:
    """A field's default as an operator would write it: `required`, `unset`, `true`, `9191`, `""`."""
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    text = str(default)
    return text if text else '""'
