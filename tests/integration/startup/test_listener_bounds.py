"""Every listener bounded, as real processes on loopback: a slowloris (hundreds of connections that
never finish their headers) on one listener gets 503s past its connection cap and 408s once the
header clock runs out, counted and logged, while the other listeners keep answering; a body that
stops arriving is a 408 too."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.processes import Process, free_port, http_status, tiergate_command
from tests.integration.startup.test_startup_messages import ROOT, base_env

FLOOD = 300  # slow connections, against a cap of CAP
CAP = 100
HEADER_TIMEOUT_S = 4
READ_LIMIT_S = 60  # how long a flooded connection may wait for its one answer before the test fails
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: tiergate\r\nX-Slow: "


@dataclass(frozen=True)
class Sidecar:
    process: Process
    ports: dict[str, int]  # listener name -> port

    def probe(self, listener: str) -> int | None:
        path = "/v1/check?tenant=acme&feature=sso" if listener == "check" else "/healthz"
        return http_status(f"http://127.0.0.1:{self.ports[listener]}{path}", timeout=5)


def bounded_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return base_env(
        tmp_path,
        max_connections=str(CAP),
        header_timeout_s=str(HEADER_TIMEOUT_S),
        body_timeout_s=str(HEADER_TIMEOUT_S),
        check_request_timeout_s=str(HEADER_TIMEOUT_S),
        **settings,
    )


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ports = {"main": free_port(), "authz": free_port(), "check": free_port(), "diagnostics": free_port()}
    env = bounded_env(
        tmp_path,
        sidecar_port=str(ports["main"]),
        authz_host="127.0.0.1",
        authz_port=str(ports["authz"]),
        check_port=str(ports["check"]),
        diagnostics_host="127.0.0.1",
        diagnostics_port=str(ports["diagnostics"]),
    )
    process = Process("sidecar", tiergate_command("sidecar"), env, tmp_path / "sidecar.log", ROOT)
    process.start()
    try:
        process.wait_http(f"http://127.0.0.1:{ports['main']}/healthz", lambda status: status == 200)
        yield Sidecar(process, ports)
    finally:
        process.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Process, int]]:
    port = free_port()
    env = bounded_env(tmp_path, daemon_port=str(port))
    process = Process("daemon", tiergate_command("sync-daemon"), env, tmp_path / "daemon.log", ROOT)
    process.start()
    try:
        process.wait_http(f"http://127.0.0.1:{port}/healthz", lambda status: status == 200)
        yield process, port
    finally:
        process.stop()


async def slow_connection(port: int, opened: asyncio.Event | None = None) -> int | None:
    """Send part of a request and wait: the status of the one answer, None if closed unanswered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(PARTIAL)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), READ_LIMIT_S)
    except ConnectionResetError:
        return None
    finally:
        writer.close()
    statuses = re.findall(rb"^HTTP/1\.1 (\d{3}) ", answer, flags=re.MULTILINE)
    assert len(statuses) <= 1, answer
    return int(statuses[0]) if statuses else None


async def flood_while_probing(
    sidecar: Sidecar, flooded: str
) -> tuple[Counter[int | None], dict[str, int | None]]:
    port = sidecar.ports[flooded]
    tasks = [asyncio.create_task(slow_connection(port)) for _ in range(FLOOD)]
    await asyncio.sleep(0.5)  # the flood is held open: the others must answer now
    others = [name for name in sidecar.ports if name != flooded]
    probes = await asyncio.gather(*(asyncio.to_thread(sidecar.probe, name) for name in others))
    answers = Counter(await asyncio.gather(*tasks))
    return answers, dict(zip(others, probes, strict=True))


def bound_hits(sidecar: Sidecar) -> dict[tuple[str, str], float]:
    url = f"http://127.0.0.1:{sidecar.ports['diagnostics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(
        r'^tiergate_listener_bounds_total\{bound="(\w+)",listener="(\w+)"\} (\S+)$', text, re.M
    )
    return {(listener, bound): float(value) for bound, listener, value in found}


@pytest.mark.parametrize("flooded", ["main", "authz", "check"])
async def test_a_slowloris_on_one_listener_leaves_the_others_answering(
    sidecar: Sidecar, flooded: str
) -> None:
    answers, probes = await flood_while_probing(sidecar, flooded)
    assert all(status is not None and status < 500 for status in probes.values()), probes
    assert set(answers) <= {408, 503}, answers  # each slow connection got exactly one answer
    assert answers[503] >= FLOOD - 2 * CAP, answers  # the cap held (some slots freed by 408s)
    assert answers[408] >= 1, answers
    hits = bound_hits(sidecar)
    assert hits[(flooded, "connections")] == answers[503]
    assert hits[(flooded, "header_timeout")] == answers[408]
    logged_hits = [e for e in logged(sidecar.process) if e["event"] == "listener_bound_hit"]
    assert {(e["listener"], e["bound"]) for e in logged_hits} == {
        (flooded, "connections"),
        (flooded, "header_timeout"),
    }


def logged(process: Process) -> list[dict[str, Any]]:
    lines = process.log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_the_daemon_times_out_slow_headers_and_slow_bodies(daemon: tuple[Process, int]) -> None:
    process, port = daemon
    headers_answer = asyncio.create_task(slow_connection(port))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'POST /webhooks/stripe HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n\r\n{"id": ')
    await writer.drain()
    body_answer = await asyncio.wait_for(reader.read(), READ_LIMIT_S)
    writer.close()
    assert body_answer.startswith(b"HTTP/1.1 408 "), body_answer
    assert b"TIERGATE_BODY_TIMEOUT_S" in body_answer
    assert await headers_answer == 408
    assert http_status(f"http://127.0.0.1:{port}/healthz", timeout=5) == 200
    events = logged(process)
    assert {e["bound"] for e in events if e["event"] == "listener_bound_hit"} == {
        "body_timeout",
        "header_timeout",
    }
    assert not [e for e in events if e["level"] == "error"], events  # a timed-out body is no server error
