"""structlog configuration shared by both processes: JSON lines in production, readable locally."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import orjson
import structlog


class JsonLines(NamedTuple):
    """The JSON pipeline `configure_logging` installed: its processors (the last renders the
    line's bytes), where the lines go and the lowest level written."""

    processors: tuple[structlog.typing.Processor, ...]
    sink: BinaryIO
    level: int


_json_lines: JsonLines | None = None


def configure_logging(*, json: bool = True, level: str = "info", sink: BinaryIO | None = None) -> None:
    """JSON lines go through orjson straight to stderr's buffer (or `sink`, for the benchmarks): a
    decision line costs a few µs."""
    global _json_lines
    sink = sys.stderr.buffer if sink is None else sink
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    logger_factory: Callable[..., Any]
    level_no = logging.getLevelNamesMapping()[level.upper()]
    if json:
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        logger_factory = structlog.BytesLoggerFactory(file=sink)
        _json_lines = JsonLines(tuple(processors), sink, level_no)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
        logger_factory = structlog.WriteLoggerFactory(file=sys.stderr)
        _json_lines = None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )


def json_lines() -> JsonLines | None:
    """The JSON pipeline `configure_logging` installed, while structlog still runs it (None when
    it did not install one, or when something replaced it since, e.g. a test's `capture_logs`)."""
    lines = _json_lines
    # structlog's processors are a list that `capture_logs` changes in place: compare the items.
    if lines is None or tuple(structlog.get_config()["processors"]) != lines.processors:
        return None
    return lines


class HostSafeLogger:
    """A logger for sidecar code that also runs inside a host app's process (`LocalDecisions`).

    While structlog is configured (both processes do it at start; a host app may) it is structlog's
    logger of that name. Otherwise its events go to the standard library's logger of that name,
    rendered as `key=value` text, so the host's `logging` set-up decides where they go (by default
    warnings and errors to stderr, nothing to stdout) instead of structlog's default printer.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._configured: Any = structlog.get_logger(name)
        self._stdlib: Any = None

    def _target(self) -> Any:
        if structlog.is_configured():
            return self._configured
        if self._stdlib is None:
            self._stdlib = structlog.wrap_logger(
                logging.getLogger(self.name),
                processors=[
                    structlog.stdlib.filter_by_level,
                    structlog.processors.KeyValueRenderer(key_order=["event"]),
                ],
                wrapper_class=structlog.stdlib.BoundLogger,
            )
        return self._stdlib

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._target(), attribute)


def host_safe_logger(name: str) -> Any:
    """`HostSafeLogger(name)`, typed as loosely as structlog's own `get_logger`."""
    return HostSafeLogger(name)
