"""The benchmark's floor: a raw uvloop + httptools server answering a decision-shaped JSON object.

No framework at all: an asyncio Protocol feeds httptools' parser and writes the response bytes
itself (keep-alive, no routing beyond the path). It reads the query like the baseline does and
renders the answer with orjson. It is the second reference of bench/sidecar_latency.py: what a
request costs on this machine in Python before any web framework.

    .venv/bin/python bench/floor_server.py --port 9393
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import parse_qsl

import httptools
import orjson
import uvloop

HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def answer(target: bytes) -> bytes:
    path, _, query = target.partition(b"?")
    if path == b"/healthz":
        return b'{"status":"alive"}'
    fields = dict(parse_qsl(query.decode("latin-1")))
    return orjson.dumps(
        {
            "allow": True,
            "reason": "ok",
            "tier": "pro",
            "limit": None,
            "used": 0,
            "remaining": None,
            "valid_until": None,
            "tenant": fields.get("tenant"),
            "feature": fields.get("feature"),
            "quantity": int(fields.get("quantity", 1)),
            "decision_id": "floor",
            "policy_revision": "floor",
            "data_as_of": None,
            "stale": False,
        }
    )


class FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.WriteTransport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP server's transports can write

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        body = answer(self.url)
        self.url = b""
        if self.transport is not None:
            self.transport.write(HEADERS % len(body) + body)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
