"""The main port's front: GET /v1/check on the raw protocol, everything else through aiohttp, on
one socket — compared over real sockets with the same app served by aiohttp alone."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.sidecar.conftest import ACCOUNTS, SAMPLE_FEATURES
from tests.integration.sidecar.test_check_listener import QUERIES, comparable, over_socket, responses
from tiergate.sidecar.api.check_listener import MAX_HEADERS, MAX_TARGET_BYTES
from tiergate.sidecar.api.front import FrontSite, fast_prefix, head_end
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings


@dataclass(frozen=True)
class Ports:
    front: int  # served through FrontSite, as `tiergate sidecar` serves TIERGATE_SIDECAR_PORT
    plain: int  # the same app through aiohttp's own SockSite


def _loopback() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
async def ports(settings: SidecarSettings) -> AsyncIterator[Ports]:
    runner = web.AppRunner(create_app(settings.model_copy(update={"check_request_timeout_s": 1.0})))
    await runner.setup()
    front, plain = _loopback(), _loopback()
    try:
        await FrontSite(runner, front).start()
        await web.SockSite(runner, plain).start()
        yield Ports(front.getsockname()[1], plain.getsockname()[1])
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _get(session: aiohttp.ClientSession, port: int, path: str, **kw: Any) -> tuple[int, Any, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}", **kw) as r:
        return r.status, await r.json(), r.headers.get("Server", "")


@pytest.mark.parametrize(
    ("data", "fast"),
    [
        (b"GET /v1/check?tenant=a", True),
        (b"GET /v1/check HTTP/1.1\r\n", True),
        (b"GET /v1/che", None),
        (b"", None),
        (b"GET /v1/check/batch HTTP/1.1", False),
        (b"POST /v1/check HTTP/1.1", False),
        (b"GET /healthz HTTP/1.1", False),
    ],
)
def test_a_request_is_told_apart_by_its_first_bytes(data: bytes, fast: bool | None) -> None:
    assert fast_prefix(data) is fast


def test_the_head_ends_at_the_first_blank_line() -> None:
    assert head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nGET") == 24
    assert head_end(b"GET / HTTP/1.1\nA: b\n\nGET") == 21
    assert head_end(b"GET / HTTP/1.1\r\nA: b\r\n") is None


@pytest.mark.parametrize("query", QUERIES)
async def test_the_front_answers_what_aiohttp_answers(
    ports: Ports, session: aiohttp.ClientSession, query: str
) -> None:
    fast = await _get(session, ports.front, f"/v1/check?{query}")
    plain = await _get(session, ports.plain, f"/v1/check?{query}")
    assert comparable(fast[0], fast[1]) == comparable(plain[0], plain[1])
    assert fast[2] == "" and plain[2].startswith("Python")  # the raw path answered, not aiohttp


async def test_random_checks_agree_over_one_keep_alive_connection(ports: Ports) -> None:
    rng = random.Random(11)
    tenants = [a["tenant"] for a in ACCOUNTS] + ["nobody"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(200):
            params = {"tenant": rng.choice(tenants), "feature": rng.choice(SAMPLE_FEATURES)}
            if rng.random() < 0.3:
                params["quantity"] = str(rng.randint(1, 50))
            fast = await _get(session, ports.front, "/v1/check", params=params)
            plain = await _get(session, ports.plain, "/v1/check", params=params)
            assert comparable(fast[0], fast[1]) == comparable(plain[0], plain[1])


async def test_other_routes_are_aiohttps_on_the_same_connection(ports: Ports) -> None:
    """Pipelined checks, then other routes, then checks again: every answer, in order; from the
    first other request on, aiohttp serves the connection."""
    check = b"GET /v1/check?tenant=%s&feature=sso HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b'{"tenant": "ent-active", "feature": "sso"}'
    stream = b"".join(
        (
            check % b"pro-active",
            check % b"nobody",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
            b"GET /no/such/route HTTP/1.1\r\nHost: x\r\n\r\n",
            check % b"starter-active",
            b"GET /v1/check?tenant=pro-unpaid&feature=sso HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    )
    answers = responses(await over_socket(ports.front, stream))
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 404, 200, 200]
    assert [body.get("tenant") for _, _, body in answers] == [
        "pro-active",
        "nobody",
        None,
        "ent-active",
        None,
        "starter-active",
        "pro-unpaid",
    ]
    assert answers[2][2] == {"status": "alive"}
    assert answers[4][2]["error"]["code"] == "not_found"
    servers = ["server" in headers for _, headers, _ in answers]
    assert servers == [False, False, True, True, True, True, True]


async def test_a_connection_comes_back_to_the_raw_path_between_requests(ports: Ports) -> None:
    """One request at a time on one connection, as an app's client sends them: each check after
    another route's answer is on the raw path again, and every answer is right."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ports.front)
    body = (
        b'{"event": {"transaction_id": "tx-%d", "external_customer_id": "pro-active", "code": "api_calls"}}'
    )
    steps = []
    try:
        for n in range(6):
            requests = [
                (b"GET /v1/check?tenant=pro-active&feature=api_calls HTTP/1.1\r\nHost: x\r\n\r\n", False),
                (
                    b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body % n), body % n),
                    True,
                ),
                (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", True),
            ]
            for request, by_aiohttp in requests:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
                )
                payload = json.loads(await reader.readexactly(int(headers["Content-Length"])))
                steps.append((int(head.split()[1]), "Server" in headers, by_aiohttp, payload))
    finally:
        writer.close()
    assert [(status, server) for status, server, _, _ in steps] == [
        (status, by_aiohttp) for status, by_aiohttp in [(200, False), (202, True), (404, True)] * 6
    ]
    used = [payload["used"] for status, _, _, payload in steps if status == 200]
    assert used == sorted(used) and used[-1] > used[0]  # the usage recorded shows in later checks


ODD_REQUESTS = [
    b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\r\n\r\n",
    b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /v1/check?tenant=" + b"a" * MAX_TARGET_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % n for n in range(MAX_HEADERS + 1))
    + b"\r\n",
    b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 9000 + b"\r\n\r\n",
    b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
    b"GET /v1/check HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GARBAGE\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", ODD_REQUESTS, ids=range(len(ODD_REQUESTS)))
async def test_odd_requests_get_aiohttps_answers(ports: Ports, request_bytes: bytes) -> None:
    closing = b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = {}
    for name, port in (("front", ports.front), ("plain", ports.plain)):
        raw = await over_socket(port, request_bytes + closing)
        got[name] = [comparable(status, body) for status, _, body in _readable(raw)]
    assert got["front"] == got["plain"]
    assert got["front"], "aiohttp answered nothing"


def _readable(raw: bytes) -> list[tuple[int, dict[str, str], dict[str, Any]]]:
    """The responses of a stream, where aiohttp's plain-text ones count by status alone."""
    found = []
    for status, headers, body in _split(raw):
        found.append((status, headers, body if isinstance(body, dict) else {}))
    return found


def _split(raw: bytes) -> list[tuple[int, dict[str, str], Any]]:
    out = []
    while raw.startswith(b"HTTP/"):
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        try:
            body = json.loads(rest[:length])
        except ValueError:
            body = None
        out.append((int(lines[0].split()[1]), headers, body))
        raw = rest[length:]
    return out


async def test_a_head_that_never_arrives_gets_a_408(ports: Ports) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ports.front)
    writer.write(b"GET /v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\nX-Slow: ")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)  # the sweeper closes it after the 1 s timeout
    writer.close()
    status, _, body = responses(raw)[0]
    assert (status, body["error"]["code"]) == (408, "request_timeout")


async def test_a_head_split_across_packets_is_answered_on_the_raw_path(ports: Ports) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ports.front)
    request = b"GET /v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\nConnection: close\r\n\r\n"
    for piece in (request[:5], request[5:20], request[20:60], request[60:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.01)
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    [(status, headers, body)] = responses(raw)
    assert (status, body["tenant"], "server" in headers) == (200, "pro-active", False)


async def test_many_connections_at_once_mixing_routes(ports: Ports) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def one(n: int) -> str:
            if n % 5 == 0:
                status, body, _ = await _get(session, ports.front, "/v1/status")
                return "status" if status == 200 else str(body)
            params = {"tenant": f"c{n}", "feature": "sso"}
            status, body, _ = await _get(session, ports.front, "/v1/check", params=params)
            return str(body["tenant"]) if status == 200 else str(body)

        got = await asyncio.gather(*(one(n) for n in range(300)))
    assert got == ["status" if n % 5 == 0 else f"c{n}" for n in range(300)]
