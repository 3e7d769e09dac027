"""Decision lines: the bytes structlog would write, but one write per event-loop turn."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import orjson
import pytest
import structlog

import tiergate.log
from tiergate.log import configure_logging
from tiergate.sidecar.decisions import decision_log
from tiergate.sidecar.decisions.decision_log import FLUSH_BYTES, DecisionLog

FIELDS = {
    "decision_id": "ab12cd34-7",
    "tenant": "t_1",
    "feature": "sso",
    "quantity": 1,
    "allow": False,
    "reason": "not_in_plan",
    "tier": "free",
    "policy_revision": "rev",
    "data_as_of": "2026-11-29T10:00:00Z",
    "stale": False,
}
STAMP = re.compile(rb'"timestamp":"[^"]+"')


class CountingSink(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingSink]:
    """configure_logging's JSON pipeline, writing into a sink the test reads."""
    sink = CountingSink()
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(buffer=sink))
    # configure_logging caches a logger on its first use: a proxy of this test's own, so the
    # module's stays uncached for the tests after this one (their capture_logs must reach it).
    monkeypatch.setattr(decision_log, "log", structlog.get_logger("tiergate.sidecar"))
    configure_logging(json=True, level="info")
    yield sink
    structlog.reset_defaults()
    monkeypatch.setattr(tiergate.log, "_json_lines", None)


def lines_of(sink: CountingSink) -> list[bytes]:
    return [STAMP.sub(b'"timestamp":"T"', line) for line in sink.getvalue().splitlines()]


async def test_a_line_is_what_structlog_writes(sink: CountingSink) -> None:
    structlog.get_logger("tiergate.sidecar").info("decision", **FIELDS)
    log = DecisionLog()
    log.line(dict(FIELDS))
    await asyncio.sleep(0)  # the end of this loop turn
    by_structlog, buffered = lines_of(sink)
    assert buffered == by_structlog
    assert list(orjson.loads(buffered)) == [*FIELDS, "event", "level", "timestamp"]


async def test_lines_of_one_loop_turn_go_out_in_one_write(sink: CountingSink) -> None:
    log = DecisionLog()
    for n in range(100):
        log.line(dict(FIELDS, decision_id=f"x-{n}"))
    assert sink.writes == 0  # buffered until the turn ends
    await asyncio.sleep(0)
    assert sink.writes == 1 and log.writes == 1
    assert [orjson.loads(line)["decision_id"] for line in lines_of(sink)] == [f"x-{n}" for n in range(100)]


async def test_a_full_buffer_is_written_at_once(sink: CountingSink) -> None:
    log = DecisionLog()
    count = FLUSH_BYTES // 200 + 10  # each line is over 200 bytes
    for n in range(count):
        log.line(dict(FIELDS, decision_id=f"x-{n}"))
    assert sink.writes >= 1  # before the turn ends
    await asyncio.sleep(0)
    assert len(lines_of(sink)) == count


def test_without_a_running_loop_a_line_is_written_at_once(sink: CountingSink) -> None:
    DecisionLog().line(dict(FIELDS))
    assert len(lines_of(sink)) == 1


async def test_flush_writes_what_the_turn_has_not_yet(sink: CountingSink) -> None:
    log = DecisionLog()
    log.line(dict(FIELDS))
    log.flush()  # the app's cleanup does this: a loop that stops drops its pending callbacks
    assert len(lines_of(sink)) == 1


async def test_a_level_above_info_writes_no_decision_line(
    sink: CountingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging(json=True, level="warning")
    DecisionLog().line(dict(FIELDS))
    await asyncio.sleep(0)
    assert sink.getvalue() == b""


async def test_captured_logs_see_the_line(sink: CountingSink) -> None:
    with structlog.testing.capture_logs() as logged:
        DecisionLog().line(dict(FIELDS))
    assert logged == [{**FIELDS, "event": "decision", "log_level": "info"}]


async def test_console_logging_goes_through_structlog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiergate.log, "_json_lines", None)
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(decision_log.log, "info", lambda event, **kw: seen.append({**kw, "event": event}))
    DecisionLog().line(dict(FIELDS))
    assert seen == [{**FIELDS, "event": "decision"}]
