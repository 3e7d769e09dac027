"""The check listener (TIERGATE_CHECK_PORT): the main port's GET /v1/check answers, on a raw
HTTP/1.1 protocol, and everything a client controls bounded — spoken to over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.integration.sidecar.conftest import ACCOUNTS, SAMPLE_FEATURES, ClientFactory, SidecarClient
from tiergate.sidecar.api.check_listener import CHECK_LISTENER_PORT, MAX_HEADERS, MAX_TARGET_BYTES
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings

VOLATILE = ("decision_id", "data_as_of", "replica_age_s", "decided_at", "valid_until")


@pytest.fixture
async def served(aiohttp_client: ClientFactory, settings: SidecarSettings) -> SidecarClient:
    update = {"check_port": 0, "check_request_timeout_s": 1.0}
    return await aiohttp_client(create_app(settings.model_copy(update=update)))


@pytest.fixture
async def check_url(served: SidecarClient) -> str:
    return f"http://127.0.0.1:{served.app[CHECK_LISTENER_PORT]}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def comparable(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return status, {k: v for k, v in body.items() if k not in VOLATILE}


async def over_socket(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 30)
        return await asyncio.wait_for(reader.read(65536), 30)
    finally:
        writer.close()


def responses(raw: bytes) -> list[tuple[int, dict[str, str], dict[str, Any]]]:
    """Split a stream of HTTP/1.1 responses with Content-Length bodies."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        found.append((status, headers, json.loads(rest[:length])))
        raw = rest[length:]
    return found


QUERIES = [
    "tenant=pro-active&feature=api_calls",
    "tenant=free-heavy&feature=api_calls&quantity=3",
    "tenant=%20pro-active%20&feature=sso",
    "tenant=pro-active&feature=sso&tenant=ent-active",
    "tenant=&feature=sso",
    "feature=sso",
    "tenant=pro-active",
    "tenant=pro-active&feature=api_calls&quantity=0",
    "tenant=pro-active&feature=api_calls&quantity=x",
    "tenant=pro-active&feature=api_calls&quantity=99999999999999999999",
    "tenant=" + "t" * 300 + "&feature=sso",
    "tenant=unknown-tenant&feature=sso",
    "tenant=pro-active&feature=no_such_feature",
    "tenant=caf%C3%A9&feature=sso",
    "tenant=pro+active&feature=sso",
    "tenant=pro-active&feature=sso&extra=1",
    "tenant=%FF&feature=sso",
]


@pytest.mark.parametrize("query", QUERIES)
async def test_the_check_listener_answers_what_the_main_port_answers(
    served: SidecarClient, session: aiohttp.ClientSession, check_url: str, query: str
) -> None:
    main = await served.get(f"/v1/check?{query}")
    async with session.get(f"{check_url}/v1/check?{query}") as fast:
        assert fast.headers["Content-Type"] == "application/json; charset=utf-8"
        assert comparable(fast.status, await fast.json()) == comparable(main.status, await main.json())


async def test_random_checks_agree_over_one_keep_alive_connection(
    served: SidecarClient, check_url: str
) -> None:
    rng = random.Random(7)
    tenants = [a["tenant"] for a in ACCOUNTS] + ["nobody"]
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(300):
            params = {"tenant": rng.choice(tenants), "feature": rng.choice(SAMPLE_FEATURES)}
            if rng.random() < 0.3:
                params["quantity"] = str(rng.randint(1, 50))
            main = await served.get("/v1/check", params=params)
            async with session.get(f"{check_url}/v1/check", params=params) as fast:
                assert comparable(fast.status, await fast.json()) == comparable(
                    main.status, await main.json()
                )


async def test_pipelined_requests_are_answered_in_order(served: SidecarClient) -> None:
    port = served.app[CHECK_LISTENER_PORT]
    tenants = ["pro-active", "nobody", "starter-active", "pro-unpaid"] * 5
    requests = b"".join(
        b"GET /v1/check?tenant=%s&feature=sso HTTP/1.1\r\nHost: x\r\n\r\n" % t.encode() for t in tenants
    )
    raw = await over_socket(
        port, requests + b"GET /v1/check?tenant=ent-active&feature=sso HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    answers = responses(raw)
    assert [body["tenant"] for _, _, body in answers] == [*tenants, "ent-active"]
    assert answers[-1][1]["connection"] == "close"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"POST /v1/check?tenant=a&feature=sso HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (b"GET /v1/authz HTTP/1.1\r\n\r\n", 404, "not_found"),
        (b"GET /v1/check/../admin HTTP/1.1\r\n\r\n", 404, "not_found"),
        (b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nX-Bad: \xff\xfe\r\n\r\n", 400, "bad_request"),
        (b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400, "bad_request"),
        (b"GET /v1/check?tenant=" + b"a" * MAX_TARGET_BYTES + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % n for n in range(MAX_HEADERS + 1))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            b"GET /v1/check?tenant=a&feature=sso HTTP/1.1\r\nX-Long: " + b"v" * 9000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /v1/check HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_bad_requests_get_a_json_4xx_naming_the_problem(
    served: SidecarClient, request_bytes: bytes, status: int, code: str
) -> None:
    # A refusal either keeps the connection (the next request is answered too) or closes it.
    closing = b"GET /v1/check HTTP/1.1\r\nConnection: close\r\n\r\n"
    raw = await over_socket(served.app[CHECK_LISTENER_PORT], request_bytes + closing)
    first_status, headers, body = responses(raw)[0]
    assert (first_status, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]
    if status == 405:
        assert headers["allow"] == "GET"


async def test_a_request_that_never_finishes_gets_a_408_and_the_connection_closes(
    served: SidecarClient,
) -> None:
    port = served.app[CHECK_LISTENER_PORT]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\nX-Slow: ")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)  # the sweeper closes it after the 1 s timeout
    writer.close()
    status, _, body = responses(raw)[0]
    assert (status, body["error"]["code"]) == (408, "request_timeout")


async def test_a_client_that_sends_and_never_reads_cannot_queue_without_bound(served: SidecarClient) -> None:
    """Thousands of pipelined checks with no reading: the listener stops reading past its bound,
    the connection stays answerable, and every request is answered once, in order."""
    port = served.app[CHECK_LISTENER_PORT]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    count = 3000
    for n in range(count):
        writer.write(b"GET /v1/check?tenant=t%d&feature=sso HTTP/1.1\r\n\r\n" % n)
    writer.write(b"GET /v1/check?tenant=last&feature=sso HTTP/1.1\r\nConnection: close\r\n\r\n")
    drain = asyncio.ensure_future(writer.drain())
    raw = await asyncio.wait_for(reader.read(), 60)
    await drain
    writer.close()
    tenants = [body["tenant"] for _, _, body in responses(raw)]
    assert tenants == [f"t{n}" for n in range(count)] + ["last"]


async def test_the_check_port_must_differ_from_the_main_port(settings: SidecarSettings) -> None:
    with pytest.raises(ValueError, match="TIERGATE_CHECK_PORT"):
        SidecarSettings(**{**settings.model_dump(), "sidecar_port": 9300, "check_port": 9300})


async def test_many_connections_at_once_all_get_their_answers(served: SidecarClient, check_url: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(n: int) -> str:
            async with session.get(
                f"{check_url}/v1/check", params={"tenant": f"c{n}", "feature": "sso"}
            ) as r:
                assert r.status == 200
                return str((await r.json())["tenant"])

        got = await asyncio.gather(*(one(n) for n in range(500)))
    assert got == [f"c{n}" for n in range(500)]
    assert list(itertools.islice(got, 3)) == ["c0", "c1", "c2"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        b"GET /v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\n\r\nGET /v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
        b"GET http://127.0.0.1/v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        b"GET https://example.com:8443/v1/check?tenant=pro-active&feature=sso HTTP/1.1\r\n"
        b"Host: example.com:8443\r\nConnection: close\r\n\r\n",
    ],
)
async def test_one_answer_per_request_the_main_ports(served: SidecarClient, request_bytes: bytes) -> None:
    """An upgrade request, a CONNECT and an absolute-form target: the main port's answers, once each."""
    assert served.server.port is not None

    def shape(raw: bytes) -> list[tuple[int, bool]]:
        """Each answer's status, and whether it is pro-active's decision."""
        heads = re.split(rb"(?=HTTP/1\.[01] \d{3} )", raw)[1:]
        return [(int(head[9:12]), b'"tenant":"pro-active"' in head) for head in heads]

    main = shape(await answers_until_quiet(served.server.port, request_bytes))
    fast = shape(await answers_until_quiet(served.app[CHECK_LISTENER_PORT], request_bytes))
    assert len(fast) == 1, fast
    assert fast == main[:1]


async def answers_until_quiet(port: int, data: bytes, quiet_s: float = 1.0) -> bytes:
    """What a server sends until it closes or stays quiet for `quiet_s` (a keep-alive connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        for _ in range(100):  # bounded: 100 quiet windows at most
            try:
                chunk = await asyncio.wait_for(reader.read(65536), quiet_s)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        writer.close()
    return received
