"""The main port's front (tiergate/sidecar/api/front.py, ADR 39), on a real sidecar over real
sockets: plain checks answered on the raw path with aiohttp's answers, any other request handed to
aiohttp with its connection, in order; idle connections closed. The listener bounds on the main
port (slowloris, the connection cap) are tests/integration/startup/test_listener_bounds.py's, which
run through the front."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.processes import Process, free_port, tiergate_command
from tests.integration.startup.test_startup_messages import ROOT, base_env
from tiergate.sidecar.api.front import plain_check

IDLE_TIMEOUT_S = 1
CHECK = b"GET /v1/check?tenant=acme&feature=api_calls HTTP/1.1\r\nHost: t\r\n\r\n"
# The same request with a header that keeps it off the raw path: aiohttp answers it.
CHECK_ON_AIOHTTP = (
    b"GET /v1/check?tenant=acme&feature=api_calls HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
)


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = base_env(tmp_path, sidecar_port=str(port), idle_timeout_s=str(IDLE_TIMEOUT_S))
    process = Process("sidecar", tiergate_command("sidecar"), env, tmp_path / "sidecar.log", ROOT)
    process.start()
    try:
        process.wait_http(f"http://127.0.0.1:{port}/healthz", lambda status: status == 200)
        yield port
    finally:
        process.stop()


async def exchange(port: int, data: bytes, answers: int) -> list[tuple[int, bool, bytes]]:
    """Send `data` on one connection; (status, answered by aiohttp, body) of `answers` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            out.append((int(head[9:12]), b"\r\nServer: " in head, body))
        return out
    finally:
        writer.close()


def without_id(body: bytes) -> dict[str, object]:
    return {**json.loads(body), "decision_id": ""}


@pytest.mark.parametrize(
    "query",
    [
        "tenant=acme&feature=api_calls",
        "tenant=acme&feature=api_calls&quantity=5",
        "tenant=%20acme%20&feature=sso",
        "tenant=acme&tenant=other&feature=sso",
        "tenant=acme",
        "tenant=&feature=sso",
        "tenant=acme&feature=sso&quantity=0",
        "tenant=acme&feature=sso&quantity=x",
        "tenant=%FF&feature=sso",
        "feature=" + "f" * 300 + "&tenant=acme",
    ],
)
async def test_a_plain_check_on_the_raw_path_answers_what_aiohttp_answers(port: int, query: str) -> None:
    raw = f"GET /v1/check?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    assert plain_check(raw[:-4])
    on_aiohttp = raw[:-2] + b"Content-Length: 0\r\n\r\n"
    [(status, by_aiohttp, body)] = await exchange(port, raw, 1)
    [(want_status, want_by_aiohttp, want)] = await exchange(port, on_aiohttp, 1)
    assert (by_aiohttp, want_by_aiohttp) == (False, True)
    assert status == want_status
    assert without_id(body) == without_id(want) if status == 200 else json.loads(body) == json.loads(want)


async def test_checks_and_other_requests_on_one_connection_are_answered_in_order(port: int) -> None:
    usage = json.dumps(
        {"event": {"transaction_id": "front-1", "external_customer_id": "acme", "code": "api_calls"}}
    )
    post = (
        b"POST /v1/usage HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(usage), usage.encode())
    )
    pipelined = CHECK + CHECK + post + CHECK + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + CHECK
    answers = await exchange(port, pipelined, 6)
    assert [status for status, _, _ in answers] == [200, 200, 202, 200, 200, 200]
    # The first two on the raw path; from the usage record on, the connection is aiohttp's.
    assert [by_aiohttp for _, by_aiohttp, _ in answers] == [False, False, True, True, True, True]
    used = [json.loads(body)["used"] for status, _, body in answers if b'"allow"' in body]
    assert used == [used[0], used[0], used[0] + 1, used[0] + 1]  # the record shows in the next check


async def test_a_request_that_is_not_plain_goes_to_aiohttp_whole(port: int) -> None:
    oversize = b"GET /v1/check?tenant=acme&feature=" + b"f" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    non_ascii = b"GET /v1/check?tenant=acme&feature=sso HTTP/1.1\r\nHost: t\r\nX-Name: \xff\r\n\r\n"
    for request in (oversize, non_ascii, CHECK[:20]):
        assert not plain_check(request.partition(b"\r\n\r\n")[0])
    [(status, by_aiohttp, _)] = await exchange(port, oversize, 1)
    assert (status, by_aiohttp) == (400, True)
    [(status, by_aiohttp, body)] = await exchange(port, non_ascii, 1)
    assert (status, by_aiohttp) == (400, True) and b"X-Name" in body
    # A head that arrives in pieces is aiohttp's too (its header clock times it).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(CHECK[:20])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(CHECK[20:])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"\r\nServer: " in head
    finally:
        writer.close()


async def test_an_idle_connection_on_the_front_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(CHECK)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"\r\nServer: " not in head  # answered on the front
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        assert await asyncio.wait_for(reader.read(), IDLE_TIMEOUT_S + 5) == b""  # closed by the sidecar
    finally:
        writer.close()
